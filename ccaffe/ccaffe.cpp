#include "ccaffe.hpp"

#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <climits>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <unistd.h>

#include <google/protobuf/io/zero_copy_stream_impl.h>

#include "caffe/caffe.hpp"
#include "caffe/layer_factory.hpp"
#include "caffe/sgd_solvers.hpp"
#include "caffe/util/db.hpp"
#include "caffe/util/insert_splits.hpp"
#include "caffe/util/io.hpp"
#include "caffe/util/upgrade_proto.hpp"

extern "C" {
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
}

namespace ccaffe {

using caffe::Blob;
using caffe::Caffe;
using caffe::Net;
using caffe::NetParameter;
using caffe::SolverParameter;

std::string current_exception_message() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown C++ exception";
  }
}

bool current_exception_is_usage_error() {
  try {
    throw;
  } catch (const std::invalid_argument&) {
    return true;
  } catch (const std::out_of_range&) {
    return true;
  } catch (...) {
    return false;
  }
}

void set_log_level(int level) { FLAGS_minloglevel = level; }

bool cuda_build() {
#ifdef CPU_ONLY
  return false;
#else
  return true;
#endif
}

int gpu_count() {
#ifdef CPU_ONLY
  return 0;
#else
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
#endif
}

void set_blas_threads(int threads) {
  if (threads < 1) throw std::invalid_argument("BLAS threads must be >= 1");
  openblas_set_num_threads(threads);
}

int blas_threads() { return openblas_get_num_threads(); }

namespace {

std::string shape_string(const std::vector<int>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

std::vector<int> proto_shape(const caffe::BlobProto& b) {
  if (b.has_shape()) return std::vector<int>(b.shape().dim().begin(), b.shape().dim().end());
  if (b.has_num() || b.has_channels() || b.has_height() || b.has_width())
    return {b.num(), b.channels(), b.height(), b.width()};
  return {};
}

void copy_inputs(Net<float>& net, const std::vector<const float*>& inputs) {
  const std::vector<Blob<float>*>& blobs = net.input_blobs();
  if (inputs.size() > blobs.size())
    throw std::invalid_argument("more input arrays than the net has input blobs");
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i] == nullptr) continue;
    std::memcpy(blobs[i]->mutable_cpu_data(), inputs[i], sizeof(float) * blobs[i]->count());
  }
}

// The loss of the last forward pass: the loss-weighted sum of the output blobs.
float current_loss(const Net<float>& net) {
  const std::vector<int>& outs = net.output_blob_indices();
  const std::vector<float>& weights = net.blob_loss_weights();
  double loss = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    const float w = weights[outs[i]];
    if (w == 0) continue;
    const Blob<float>& blob = *net.blobs()[outs[i]];
    const float* data = blob.cpu_data();
    for (int j = 0; j < blob.count(); ++j) loss += w * data[j];
  }
  return static_cast<float>(loss);
}

// The Solver's protected members, reached the standard way: a pointer to
// member named through a derived class is a pointer to the base's member, and
// applies to any Solver (this class is never instantiated).
struct SolverAccess : caffe::Solver<float> {
  static int& iter(caffe::Solver<float>& s) { return s.*(&SolverAccess::iter_); }
  static std::vector<float>& losses(caffe::Solver<float>& s) {
    return s.*(&SolverAccess::losses_);
  }
  static float& smoothed_loss(caffe::Solver<float>& s) {
    return s.*(&SolverAccess::smoothed_loss_);
  }
  static void update_smoothed_loss(caffe::Solver<float>& s, float loss, int start_iter,
                                   int average_loss) {
    (s.*(&SolverAccess::UpdateSmoothedLoss))(loss, start_iter, average_loss);
  }
  static void apply_update(caffe::Solver<float>& s) { (s.*(&SolverAccess::ApplyUpdate))(); }
  static int& current_step(caffe::Solver<float>& s) {
    return s.*(&SolverAccess::current_step_);
  }
};

// Every built-in solver (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)
// keeps its state in SGDSolver's history blobs.
struct HistoryAccess : caffe::SGDSolver<float> {
  static std::vector<boost::shared_ptr<Blob<float>>>& history(caffe::Solver<float>& s) {
    auto* sgd = dynamic_cast<caffe::SGDSolver<float>*>(&s);
    if (sgd == nullptr) throw std::invalid_argument("this solver type keeps no history blobs");
    return sgd->*(&HistoryAccess::history_);
  }
};

const char kStateMagic[8] = {'S', 'N', 'S', 'T', 'A', 'T', 'E', '1'};

// Caffe's CPU max pooling starts every output at -FLT_MAX with argmax -1 and
// takes a bottom value only when it is greater. A window of nothing but NaN
// (or -inf) keeps both, and Backward_cpu then adds to bottom_diff[-1]: out of
// bounds (a "double free" later). An output still at -FLT_MAX right after the
// layer's forward pass (a later in-place layer may overwrite it) marks exactly
// such a window, since any value taken is greater than -FLT_MAX.
bool unfilled_window(const Blob<float>& top) {
  const float* data = top.cpu_data();
  const int count = top.count();
  for (int j = 0; j < count; ++j)
    if (data[j] <= -FLT_MAX) return true;
  return false;
}

std::string dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::string basename(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool file_exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// Rethrow the exception being handled with `context` before its message,
// keeping its kind (usage error or Caffe failure). Call only in a catch block.
[[noreturn]] void rethrow_with(const std::string& context) {
  const std::string message = context + current_exception_message();
  if (current_exception_is_usage_error()) throw std::invalid_argument(message);
  throw std::runtime_error(message);
}

std::string layer_label(const caffe::LayerParameter& layer) {
  return "layer '" + layer.name() + "' (" + layer.type() + ")";
}

// -- which layer Caffe was building ------------------------------------------------
//
// Net::Init creates each layer through the layer registry and sets it up
// (LayerSetUp, Reshape) right after, before it creates the next. Every
// registered creator is wrapped by one that records the layer it creates, so
// when building a net throws, the last layer recorded is the one that failed.
using Registry = caffe::LayerRegistry<float>;

std::map<std::string, Registry::Creator>& original_creators() {
  static auto* creators = new std::map<std::string, Registry::Creator>();
  return *creators;
}

thread_local const char* building = nullptr;  // set while this thread builds a net
thread_local std::string last_layer;          // layer_label of the last layer created
thread_local int created = 0;                 // layers created so far in this build

boost::shared_ptr<caffe::Layer<float>> recording_creator(const caffe::LayerParameter& param) {
  if (building != nullptr) {
    last_layer = layer_label(param);
    ++created;
  }
  return original_creators().at(param.type())(param);
}

// The shapes of the inputs of layer `index` (0-based, in creation order) of the
// net Caffe builds from `param` in `state`, found by building that net again up
// to the layer before it; "" when they cannot be found.
std::string input_shapes(const NetParameter& param, const caffe::NetState& state, int index) {
  try {
    NetParameter with_state(param), kept, split;
    with_state.mutable_state()->CopyFrom(state);
    Net<float>::FilterNet(with_state, &kept);
    caffe::InsertSplits(kept, &split);  // as Net::Init does: creation order is this order
    if (index < 0 || index >= split.layer_size() || split.layer(index).bottom_size() == 0)
      return "";
    const caffe::LayerParameter failed = split.layer(index);
    split.mutable_layer()->DeleteSubrange(index, split.layer_size() - index);
    std::map<std::string, std::string> given;  // Caffe's split copies -> the name written
    for (const caffe::LayerParameter& layer : split.layer())
      if (layer.type() == "Split")
        for (const std::string& top : layer.top()) given[top] = layer.bottom(0);
    Net<float> before(split);
    std::string shapes;
    for (const std::string& blob : failed.bottom()) {
      if (!before.has_blob(blob)) return "";
      shapes += (shapes.empty() ? "'" : ", '") + (given.count(blob) ? given[blob] : blob) +
                "' " + shape_string(before.blob_by_name(blob)->shape());
    }
    return ", reading " + shapes + ",";
  } catch (...) {
    return "";
  }
}

void record_layer_creation() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (auto& entry : Registry::Registry()) {
      original_creators()[entry.first] = entry.second;
      entry.second = &recording_creator;
    }
  });
}

// Run build(), which builds the net of `param` in `state`; an exception it
// throws is rethrown naming the layer Caffe was setting up and the shapes of
// its inputs. `what` says which net, for the message.
template <typename F>
auto naming_the_layer(const char* what, const NetParameter* param, const caffe::NetState& state,
                      F build) -> decltype(build()) {
  record_layer_creation();
  building = what;
  last_layer.clear();
  created = 0;
  try {
    auto result = build();
    building = nullptr;
    return result;
  } catch (...) {
    building = nullptr;
    if (last_layer.empty()) throw;
    const std::string inputs = param ? input_shapes(*param, state, created - 1) : "";
    rethrow_with(last_layer + inputs + " failed while Caffe set up the " + what + " net: ");
  }
}

// A Data layer's database: Caffe opens it in a reader thread, where a failed
// CHECK cannot be caught (std::terminate). Open it here first, and read its
// first record, so that a missing, empty or foreign database is an error.
void check_database(const caffe::LayerParameter& layer) {
  const caffe::DataParameter& data = layer.data_param();
  try {
    std::unique_ptr<caffe::db::DB> db(caffe::db::GetDB(data.backend()));
    db->Open(data.source(), caffe::db::READ);
    std::unique_ptr<caffe::db::Cursor> cursor(db->NewCursor());
    if (!cursor->valid()) throw std::runtime_error("it holds no records");
    caffe::Datum datum;
    if (!datum.ParseFromString(cursor->value()))
      throw std::runtime_error("its first record (key '" + cursor->key() +
                               "') is not a caffe.Datum");
  } catch (...) {
    rethrow_with(layer_label(layer) + ": cannot read data_param.source '" + data.source() +
                 "' (" + (data.backend() == caffe::DataParameter::LMDB ? "LMDB" : "LevelDB") +
                 "): ");
  }
}

// The layers of `param` that a net of `state` keeps (Caffe's FilterNet), each
// of a type this Caffe knows; otherwise the first unknown one is named (Caffe
// would fail in its layer factory, naming the type but not the layer). Data
// layers' databases are checked as well.
void check_layers(const NetParameter& param, const caffe::NetState& state) {
  NetParameter with_state(param);
  with_state.mutable_state()->CopyFrom(state);
  NetParameter kept;
  Net<float>::FilterNet(with_state, &kept);
  const Registry::CreatorRegistry& known = Registry::Registry();
  for (const caffe::LayerParameter& layer : kept.layer()) {
    if (layer.type() == "Data") check_database(layer);
    if (known.count(layer.type())) continue;
    std::string types;
    for (const auto& entry : known) types += (types.empty() ? "" : ", ") + entry.first;
    throw std::runtime_error("layer '" + layer.name() + "': Unknown layer type: " +
                             layer.type() + " (known types: " + types + ")");
  }
}

// The net a solver trains, with its state (Solver::InitTrainNet's rules).
const NetParameter* solver_net(const SolverParameter& param) {
  if (param.has_net_param()) return &param.net_param();
  if (param.has_train_net_param()) return &param.train_net_param();
  return nullptr;
}

// Net::Reshape, one layer at a time, naming a layer that fails.
void reshape_naming_the_layer(Net<float>& n) {
  for (size_t l = 0; l < n.layers().size(); ++l) {
    try {
      n.layers()[l]->Reshape(n.bottom_vecs()[l], n.top_vecs()[l]);
    } catch (...) {
      rethrow_with(layer_label(n.layers()[l]->layer_param()) +
                   " cannot take its new input shapes: ");
    }
  }
}

// Net::ForwardFromTo(l, l) for one layer, naming it when it fails.
float forward_naming_the_layer(Net<float>& n, int l) {
  try {
    return n.ForwardFromTo(l, l);
  } catch (...) {
    rethrow_with(layer_label(n.layers()[l]->layer_param()) + " failed in the forward pass: ");
  }
}

// Serialize `message` into the open file descriptor fd (which stays open): 0,
// the errno of the write that failed, or -1 with *error set. Caffe's
// WriteProtoToBinaryFile would fail a CHECK instead, naming neither the file
// nor the cause (a full disk reads "Check failed: proto.SerializeToOstream").
int write_message(const google::protobuf::Message& message, int fd, std::string* error) {
  if (message.ByteSizeLong() > static_cast<size_t>(INT_MAX)) {
    *error = "the message is " + std::to_string(message.ByteSizeLong()) +
             " bytes, more than protobuf can write (2 GB)";
    return -1;
  }
  google::protobuf::io::FileOutputStream out(fd);
  if (message.SerializeToZeroCopyStream(&out) && out.Flush()) return 0;
  return out.GetErrno() != 0 ? out.GetErrno() : EIO;
}

void rename_or_throw(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0)
    throw std::runtime_error("cannot rename " + from + " to " + to + ": " + std::strerror(errno));
}

}  // namespace

Engine::Engine(const std::string& solver_param, int gpu) : gpu_(gpu) {
  SolverParameter param;
  if (!param.ParseFromString(solver_param))
    throw std::invalid_argument("the bytes given are not a serialized caffe.SolverParameter");
  if (gpu >= 0) {
    if (!cuda_build())
      throw std::invalid_argument("this Caffe was built without CUDA (CPU_ONLY); use the CPU");
    Caffe::SetDevice(gpu);
    Caffe::set_mode(Caffe::GPU);
  } else {
    Caffe::set_mode(Caffe::CPU);
  }
  const NetParameter* np = solver_net(param);
  caffe::NetState state;
  if (np != nullptr) {
    state.set_phase(caffe::TRAIN);
    state.MergeFrom(np->state());
    state.MergeFrom(param.train_state());
    check_layers(*np, state);
  }
  solver_.reset(naming_the_layer("TRAIN", np, state, [&] {
    return caffe::SolverRegistry<float>::CreateSolver(param);
  }));
  const Net<float>& n = *solver_->net();
  for (size_t i = 0; i < n.layers().size(); ++i) {
    const caffe::LayerParameter& layer = n.layers()[i]->layer_param();
    if (std::strcmp(n.layers()[i]->type(), "Pooling") == 0 &&
        layer.pooling_param().pool() == caffe::PoolingParameter_PoolMethod_MAX)
      max_pools_.push_back(static_cast<int>(i));
  }
}

Engine::~Engine() = default;

Net<float>& Engine::net(NetId id) const {
  if (id == kTrain) return *solver_->net();
  if (!test_net_) {
    // Built on first use: a TEST-phase instance of the solver's net, sharing
    // the learnable blobs of the TRAIN net, as Caffe's own test nets do.
    const SolverParameter& param = solver_->param();
    NetParameter np;
    if (param.has_net_param()) {
      np = param.net_param();
    } else if (param.has_train_net_param()) {
      np = param.train_net_param();
    } else if (param.has_net()) {
      caffe::ReadNetParamsFromTextFileOrDie(param.net(), &np);
    } else {
      throw std::invalid_argument("the solver has no net to build a TEST net from");
    }
    caffe::NetState state;
    state.set_phase(caffe::TEST);
    state.MergeFrom(np.state());
    if (param.test_state_size() > 0) state.MergeFrom(param.test_state(0));
    np.mutable_state()->CopyFrom(state);
    check_layers(np, state);
    auto* self = const_cast<Engine*>(this);
    self->test_net_.reset(
        naming_the_layer("TEST", &np, state, [&] { return new Net<float>(np); }));
    self->test_net_->ShareTrainedLayersWith(solver_->net().get());
  }
  return *test_net_;
}

std::vector<LayerInfo> Engine::layers(NetId id) const {
  Net<float>& n = net(id);
  std::vector<LayerInfo> out;
  for (size_t l = 0; l < n.layers().size(); ++l) {
    LayerInfo info;
    const caffe::LayerParameter& param = n.layers()[l]->layer_param();
    info.name = n.layer_names()[l];
    info.type = n.layers()[l]->type();
    for (int b : n.bottom_ids(static_cast<int>(l))) info.bottoms.push_back(n.blob_names()[b]);
    for (int t : n.top_ids(static_cast<int>(l))) info.tops.push_back(n.blob_names()[t]);
    param.SerializeToString(&info.param);
    out.push_back(std::move(info));
  }
  return out;
}

std::vector<BlobInfo> Engine::inputs(NetId id) const {
  Net<float>& n = net(id);
  std::vector<BlobInfo> out;
  for (size_t i = 0; i < n.input_blob_indices().size(); ++i) {
    int b = n.input_blob_indices()[i];
    out.push_back({n.blob_names()[b], n.blobs()[b]->shape()});
  }
  return out;
}

std::vector<BlobInfo> Engine::outputs(NetId id) const {
  Net<float>& n = net(id);
  std::vector<BlobInfo> out;
  for (int b : n.output_blob_indices()) out.push_back({n.blob_names()[b], n.blobs()[b]->shape()});
  return out;
}

std::vector<std::string> Engine::blob_names(NetId id) const { return net(id).blob_names(); }

std::vector<BlobInfo> Engine::blob_shapes(NetId id) const {
  Net<float>& n = net(id);
  std::vector<BlobInfo> out;
  for (size_t b = 0; b < n.blobs().size(); ++b) out.push_back({n.blob_names()[b], n.blobs()[b]->shape()});
  return out;
}

float* Engine::input_data(NetId id, int i) {
  Net<float>& n = net(id);
  if (i < 0 || i >= static_cast<int>(n.input_blobs().size()))
    throw std::out_of_range("no input blob with that index");
  return n.input_blobs()[i]->mutable_cpu_data();
}

void Engine::reshape_inputs(NetId id, const std::vector<std::vector<int>>& shapes) {
  Net<float>& n = net(id);
  if (shapes.size() > n.input_blobs().size())
    throw std::out_of_range("more shapes than the net has input blobs");
  for (size_t i = 0; i < shapes.size(); ++i)
    if (!shapes[i].empty()) n.input_blobs()[i]->Reshape(shapes[i]);
  reshape_naming_the_layer(n);
}

const float* Engine::blob_data(NetId id, const std::string& name, std::vector<int>* shape) const {
  Net<float>& n = net(id);
  if (!n.has_blob(name))
    throw std::invalid_argument("the " + std::string(id == kTrain ? "TRAIN" : "TEST") +
                                " net has no blob named '" + name + "'");
  const boost::shared_ptr<Blob<float>> blob = n.blob_by_name(name);
  *shape = blob->shape();
  return blob->cpu_data();
}

// Solver::Step(1) (solver.cpp), statement for statement, with the check
// between forward and backward. The parts of Step that the engine switches off
// (_engine_solver in net.py sets test_interval, display and snapshot to 0, and
// no action function or callback is ever installed) are left out.
float Engine::checked_step() {
  caffe::Solver<float>& s = *solver_;
  Net<float>& n = *s.net();
  const SolverParameter& param = s.param();
  if (!s.callbacks().empty())
    throw std::logic_error("ccaffe's checked step does not run solver callbacks");
  const int start_iter = s.iter();
  SolverAccess::losses(s).clear();
  SolverAccess::smoothed_loss(s) = 0;
  n.ClearParamDiffs();
  const bool display = param.display() && s.iter() % param.display() == 0;
  n.set_debug_info(display && param.debug_info());
  // Max-pooling layers whose backward pass runs, in net order.
  std::vector<int> pools;
  if (Caffe::mode() == Caffe::CPU)  // the GPU's backward kernel gathers: -1 is harmless there
    for (int i : max_pools_)
      if (n.layer_need_backward()[i]) pools.push_back(i);
  const int layers = static_cast<int>(n.layers().size());
  float loss = 0;
  float reported = 0;
  for (int i = 0; i < param.iter_size(); ++i) {
    // Net::Forward(&loss), one layer at a time, to look at each pool's output
    // before a later in-place layer overwrites it.
    float forward_loss = 0;
    bool unfilled = false;
    size_t next_pool = 0;
    for (int l = 0; l < layers; ++l) {
      forward_loss += forward_naming_the_layer(n, l);
      if (next_pool < pools.size() && pools[next_pool] == l) {
        ++next_pool;
        unfilled = unfilled || unfilled_window(*n.top_vecs()[l][0]);
      }
    }
    reported = current_loss(n);
    if (!std::isfinite(reported)) return reported;
    if (!std::isfinite(forward_loss)) return forward_loss;
    if (unfilled) return std::numeric_limits<float>::quiet_NaN();
    n.Backward();
    loss += forward_loss;
  }
  loss /= param.iter_size();
  SolverAccess::update_smoothed_loss(s, loss, start_iter, param.average_loss());
  SolverAccess::apply_update(s);
  ++SolverAccess::iter(s);
  return reported;
}

bool Engine::step(const std::vector<const float*>& inputs, bool check_finite, float* loss,
                  std::string* error) {
  try {
    if (gpu_ >= 0 && Caffe::mode() != Caffe::GPU) Caffe::set_mode(Caffe::GPU);
    Net<float>& n = *solver_->net();
    copy_inputs(n, inputs);
    if (check_finite) {
      *loss = checked_step();
    } else {
      solver_->Step(1);
      *loss = current_loss(n);
    }
    return true;
  } catch (...) {
    *error = current_exception_message();
    return false;
  }
}

bool Engine::forward(NetId id, const std::vector<const float*>& inputs, std::string* error) {
  try {
    if (gpu_ >= 0 && Caffe::mode() != Caffe::GPU) Caffe::set_mode(Caffe::GPU);
    Net<float>& n = net(id);
    copy_inputs(n, inputs);
    const int layers = static_cast<int>(n.layers().size());
    for (int l = 0; l < layers; ++l) forward_naming_the_layer(n, l);
    return true;
  } catch (...) {
    *error = current_exception_message();
    return false;
  }
}

int Engine::iteration() const { return solver_->iter(); }

void Engine::seed(unsigned int seed) {
  if (gpu_ >= 0) {
    Caffe::SetDevice(gpu_);
    Caffe::set_mode(Caffe::GPU);
  }
  Caffe::set_random_seed(seed);
}

std::vector<BlobInfo> Engine::param_layers() const {
  const Net<float>& n = *solver_->net();
  std::vector<BlobInfo> out;
  for (size_t i = 0; i < n.layers().size(); ++i) {
    if (n.layers()[i]->blobs().empty()) continue;
    out.push_back({n.layer_names()[i], {static_cast<int>(i)}});
  }
  return out;
}

std::vector<std::vector<int>> Engine::param_shapes(int layer) const {
  const Net<float>& n = *solver_->net();
  std::vector<std::vector<int>> out;
  for (const auto& blob : n.layers().at(layer)->blobs()) out.push_back(blob->shape());
  return out;
}

float* Engine::param_data(int layer, int blob) {
  const Net<float>& n = *solver_->net();
  return n.layers().at(layer)->blobs().at(blob)->mutable_cpu_data();
}

int Engine::write_weights(int fd, bool diff, std::string* error) const {
  try {
    NetParameter param;
    solver_->net()->ToProto(&param, diff);
    return write_message(param, fd, error);
  } catch (...) {
    *error = current_exception_message();
    return -1;
  }
}

int Engine::write_solverstate(int fd, const std::string& learned_net,
                              std::string* error) const {
  try {
    // SGDSolver::SnapshotSolverStateToBinaryProto, field for field, minus the
    // file it opens by itself.
    caffe::Solver<float>& s = *solver_;
    caffe::SolverState state;
    state.set_iter(SolverAccess::iter(s));
    state.set_learned_net(learned_net);
    state.set_current_step(SolverAccess::current_step(s));
    for (const auto& blob : HistoryAccess::history(s)) blob->ToProto(state.add_history());
    return write_message(state, fd, error);
  } catch (...) {
    *error = current_exception_message();
    return -1;
  }
}

void Engine::load_weights(const std::string& path) {
  if (!file_exists(path)) throw std::invalid_argument(path + ": no such file");
  NetParameter source;
  caffe::ReadNetParamsFromBinaryFileOrDie(path, &source);
  // Check every layer before copying any, so a mismatch changes nothing.
  Net<float>& n = *solver_->net();
  std::ostringstream bad;
  int matched = 0;
  for (const caffe::LayerParameter& layer : source.layer()) {
    if (!n.has_layer(layer.name())) continue;
    const auto& target = n.layer_by_name(layer.name())->blobs();
    if (layer.blobs_size() == 0) continue;
    ++matched;
    if (static_cast<size_t>(layer.blobs_size()) != target.size()) {
      bad << "\n  layer '" << layer.name() << "': the file has " << layer.blobs_size()
          << " parameter blobs, the net " << target.size();
      continue;
    }
    for (int j = 0; j < layer.blobs_size(); ++j) {
      if (!target[j]->ShapeEquals(layer.blobs(j)))
        bad << "\n  layer '" << layer.name() << "' blob " << j << ": the file has shape "
            << shape_string(proto_shape(layer.blobs(j))) << ", the net "
            << shape_string(target[j]->shape());
    }
  }
  if (!bad.str().empty())
    throw std::invalid_argument(path + " does not fit the net:" + bad.str());
  if (matched == 0)
    throw std::invalid_argument(path + " has no weights for any layer of the net");
  n.CopyTrainedLayersFrom(source);
}

void Engine::snapshot_hdf5(const std::string& prefix) {
  auto& param = const_cast<SolverParameter&>(solver_->param());
  const std::string saved_prefix = param.snapshot_prefix();
  const SolverParameter::SnapshotFormat saved_format = param.snapshot_format();
  param.set_snapshot_prefix(prefix);
  param.set_snapshot_format(SolverParameter::HDF5);
  try {
    solver_->Snapshot();
  } catch (...) {
    param.set_snapshot_prefix(saved_prefix);
    param.set_snapshot_format(saved_format);
    throw;
  }
  param.set_snapshot_prefix(saved_prefix);
  param.set_snapshot_format(saved_format);
}

void Engine::save_state(const std::string& path) const {
  caffe::Solver<float>& s = *solver_;
  const auto& history = HistoryAccess::history(s);
  const std::string tmp = path + ".tmp" + std::to_string(getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) throw std::runtime_error(path + ": cannot write (" + std::strerror(errno) + ")");
  bool ok = std::fwrite(kStateMagic, 1, 8, f) == 8;
  const int64_t head[3] = {SolverAccess::iter(s), SolverAccess::current_step(s),
                           static_cast<int64_t>(history.size())};
  ok = ok && std::fwrite(head, sizeof(int64_t), 3, f) == 3;
  for (const auto& blob : history) {
    const int64_t count = blob->count();
    ok = ok && std::fwrite(&count, sizeof(int64_t), 1, f) == 1;
  }
  for (const auto& blob : history) {
    const size_t n = static_cast<size_t>(blob->count());
    ok = ok && std::fwrite(blob->cpu_data(), sizeof(float), n, f) == n;
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": writing the solver state failed");
  }
  rename_or_throw(tmp, path);
}

void Engine::load_state(const std::string& path) {
  caffe::Solver<float>& s = *solver_;
  auto& history = HistoryAccess::history(s);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(path + ": no such file");
  char magic[8];
  int64_t head[3];
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(head), sizeof(head));
  if (!in || std::memcmp(magic, kStateMagic, 8) != 0)
    throw std::invalid_argument(path + ": not a sparknet solver state");
  if (head[2] != static_cast<int64_t>(history.size()))
    throw std::invalid_argument(path + ": " + std::to_string(head[2]) + " history blobs, this "
                                "solver has " + std::to_string(history.size()));
  std::vector<int64_t> counts(history.size());
  in.read(reinterpret_cast<char*>(counts.data()), counts.size() * sizeof(int64_t));
  int64_t total = 0;
  for (size_t i = 0; i < history.size(); ++i) {
    if (!in || counts[i] != history[i]->count())
      throw std::invalid_argument(path + ": history blob " + std::to_string(i) + " holds " +
                                  std::to_string(counts[i]) + " values, this solver's " +
                                  std::to_string(history[i]->count()));
    total += counts[i];
  }
  const std::streamoff data_start = in.tellg();
  in.seekg(0, std::ios::end);
  if (in.tellg() - data_start != static_cast<std::streamoff>(total * sizeof(float)))
    throw std::invalid_argument(path + ": truncated solver state");
  in.seekg(data_start);
  for (auto& blob : history)
    in.read(reinterpret_cast<char*>(blob->mutable_cpu_data()), blob->count() * sizeof(float));
  if (!in) throw std::runtime_error(path + ": reading the solver state failed");
  SolverAccess::iter(s) = static_cast<int>(head[0]);
  SolverAccess::current_step(s) = static_cast<int>(head[1]);
}

void Engine::restore(const std::string& solverstate) {
  if (!file_exists(solverstate)) throw std::invalid_argument(solverstate + ": no such file");
  const bool hdf5 = solverstate.size() >= 3 &&
                    solverstate.compare(solverstate.size() - 3, 3, ".h5") == 0;
  if (!hdf5) {
    caffe::SolverState state;
    caffe::ReadProtoFromBinaryFileOrDie(solverstate, &state);
    // A snapshot moved to another directory still names its model by the old
    // path; fall back to the model file next to the state file.
    if (state.has_learned_net() && !file_exists(state.learned_net())) {
      const std::string sibling = dirname(solverstate) + "/" + basename(state.learned_net());
      if (!file_exists(sibling))
        throw std::invalid_argument(solverstate + " names the model " + state.learned_net() +
                                    ", which does not exist (nor does " + sibling + ")");
      state.set_learned_net(sibling);
      const std::string tmp = solverstate + ".tmp" + std::to_string(getpid());
      caffe::WriteProtoToBinaryFile(state, tmp);
      try {
        solver_->Restore(tmp.c_str());
      } catch (...) {
        std::remove(tmp.c_str());
        throw;
      }
      std::remove(tmp.c_str());
      return;
    }
  }
  solver_->Restore(solverstate.c_str());
}

}  // namespace ccaffe
