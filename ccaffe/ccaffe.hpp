// ccaffe: sparknet's small C++ facade over Caffe.
//
// It owns one Caffe solver (whose TRAIN net learns) and a TEST-phase net that
// shares the solver's weights, built from serialized protobuf bytes. Inputs are
// Caffe "Input" layers whose blobs the caller fills before each step. Every
// failure, including Caffe's own CHECKs (made catchable by sparknet_fatal.hpp,
// which Caffe is compiled with), is a C++ exception for the caller to convert;
// the two compute calls that run without Python's GIL report errors through a
// status instead so that no exception has to cross that boundary.
#ifndef CCAFFE_CCAFFE_HPP_
#define CCAFFE_CCAFFE_HPP_

#include <memory>
#include <string>
#include <vector>

namespace caffe {
template <typename Dtype> class Solver;
template <typename Dtype> class Net;
template <typename Dtype> class Blob;
}  // namespace caffe

namespace ccaffe {

enum NetId { kTrain = 0, kTest = 1 };

// Message of the C++ exception being handled; call only inside a catch block.
std::string current_exception_message();
// Whether that exception is a usage error (std::invalid_argument or
// std::out_of_range from the facade) rather than a failure inside Caffe.
bool current_exception_is_usage_error();

// Process-wide settings.
void set_log_level(int level);      // glog minloglevel: 0 INFO .. 3 FATAL
bool cuda_build();                  // compiled with CUDA (not CPU_ONLY)
int gpu_count();                    // 0 in a CPU build
void set_blas_threads(int threads); // OpenBLAS worker threads, >= 1
int blas_threads();

struct BlobInfo {
  std::string name;
  std::vector<int> shape;
};

// One layer of a built net (Caffe's Split layers included), in net order.
struct LayerInfo {
  std::string name;
  std::string type;
  std::vector<std::string> bottoms;
  std::vector<std::string> tops;
  std::string param;  // its caffe.LayerParameter, serialized
};

class Engine {
 public:
  // solver_param: a serialized caffe.SolverParameter whose net is inline
  // (net_param or train_net_param). gpu < 0 selects the CPU.
  //
  // When Caffe fails while it builds a net (a layer's constructor, LayerSetUp
  // or Reshape), the error names that layer and its type; a layer type this
  // Caffe lacks is named before anything is built.
  Engine(const std::string& solver_param, int gpu);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  std::vector<BlobInfo> inputs(NetId net) const;
  std::vector<BlobInfo> outputs(NetId net) const;
  std::vector<std::string> blob_names(NetId net) const;
  std::vector<BlobInfo> blob_shapes(NetId net) const;  // every blob, in net order
  std::vector<LayerInfo> layers(NetId net) const;
  // Writable CPU memory of input i of a net; valid until the next reshape.
  float* input_data(NetId net, int i);
  // Give input blobs new shapes (an empty shape keeps that blob's) and
  // propagate them through the net. A layer that cannot take its new input
  // shapes is named in the error.
  void reshape_inputs(NetId net, const std::vector<std::vector<int>>& shapes);
  // A blob's CPU data (read only) and shape; throws for an unknown name.
  const float* blob_data(NetId net, const std::string& name, std::vector<int>* shape) const;

  // One solver step on whatever the TRAIN inputs hold (inputs[i], when not
  // null, is first copied into input blob i). Sets *loss to this step's loss
  // (the loss-weighted sum of the TRAIN net's outputs after the last forward
  // pass). Never throws: returns false and fills *error instead. Safe without
  // the GIL.
  //
  // With check_finite, the step is Caffe's Solver::Step(1) with a check
  // between each forward and backward pass: when the forward pass gives a
  // non-finite loss, or (CPU) a max-pooling layer that back-propagates has an
  // output window holding no value greater than -FLT_MAX (all NaN: Caffe's
  // backward pass would then write out of bounds), the step is refused: no
  // backward pass, no update, the iteration count stays. *loss is then that
  // non-finite loss, or NaN for the pooling case. So with check_finite, the
  // step was applied exactly when *loss is finite. Without it, Caffe's own
  // Solver::Step(1) runs (the reference the checked step is tested against).
  bool step(const std::vector<const float*>& inputs, bool check_finite, float* loss,
            std::string* error);
  // Forward pass of a net after copying inputs as in step(). As in step(), a
  // layer that fails is named in *error.
  bool forward(NetId net, const std::vector<const float*>& inputs, std::string* error);
  int iteration() const;
  // Reseed Caffe's random generator of the calling thread (dropout masks and
  // other draws of the steps that follow), on this engine's device.
  void seed(unsigned int seed);

  // Learnable layers of the TRAIN net, in order, with their blob shapes.
  std::vector<BlobInfo> param_layers() const;
  std::vector<std::vector<int>> param_shapes(int layer) const;
  float* param_data(int layer, int blob);

  // The weights as a .caffemodel (Caffe's NetParameter; with diff, the
  // gradients too, as snapshot_diff asks), serialized into the open file
  // descriptor fd, which stays open. Returns 0, the errno of the write that
  // failed (a full disk, a quota), or -1 with *error set. The facade names no
  // file and makes no temporary: the caller owns both, so that every
  // .caffemodel sparknet writes goes through one atomic writer (Python's).
  // Never throws; safe without the GIL.
  int write_weights(int fd, bool diff, std::string* error) const;
  // Caffe's SolverState now (iteration, learning-rate step, history blobs),
  // naming learned_net as its model, exactly as SGDSolver's snapshot writes
  // it; into fd, with write_weights' results.
  int write_solverstate(int fd, const std::string& learned_net, std::string* error) const;
  void load_weights(const std::string& path);         // all-or-nothing
  // Caffe's own snapshot in the HDF5 format: <prefix>_iter_<N>.caffemodel.h5
  // and .solverstate.h5 (the binary format goes through write_weights and
  // write_solverstate instead).
  void snapshot_hdf5(const std::string& prefix);
  void restore(const std::string& solverstate);
  // The solver's own state (iteration, learning-rate step, history blobs) as
  // raw floats in sparknet's scratch format, written atomically: a fraction of
  // a .solverstate's cost (no protobuf, no weights). load_state checks every
  // size against this solver before it changes anything.
  void save_state(const std::string& path) const;
  void load_state(const std::string& path);

 private:
  caffe::Net<float>& net(NetId id) const;
  float checked_step();
  std::unique_ptr<caffe::Solver<float>> solver_;
  std::vector<int> max_pools_;  // TRAIN-net layers with MAX pooling, in net order
  std::unique_ptr<caffe::Net<float>> test_net_;
  int gpu_;
};

}  // namespace ccaffe

#endif  // CCAFFE_CCAFFE_HPP_
