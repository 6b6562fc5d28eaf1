// The baseline of bench/engine_overhead.py: Caffe driven from C++ alone.
//
// Builds the solver from a text SolverParameter (net inline), fills a pool of
// 8 batches (uniform data; integer labels 0..9 in the second input), and runs
// `steps` solver steps, copying the next batch into the input blobs before
// each one, exactly as sparknet's CaffeNet.train does from Python. Prints the
// seconds taken by the timed steps.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "caffe/caffe.hpp"

extern "C" void openblas_set_num_threads(int);

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s SOLVER.prototxt STEPS WARMUP\n", argv[0]);
    return 2;
  }
  FLAGS_minloglevel = 2;
  openblas_set_num_threads(1);
  caffe::SolverParameter param;
  caffe::ReadSolverParamsFromTextFileOrDie(argv[1], &param);
  const int steps = std::atoi(argv[2]), warmup = std::atoi(argv[3]);
  caffe::Caffe::set_mode(caffe::Caffe::CPU);
  boost::shared_ptr<caffe::Solver<float>> solver(
      caffe::SolverRegistry<float>::CreateSolver(param));
  const std::vector<caffe::Blob<float>*>& inputs = solver->net()->input_blobs();

  std::mt19937 rng(0);
  std::uniform_real_distribution<float> pixel(0.f, 1.f);
  std::uniform_int_distribution<int> label(0, 9);
  std::vector<std::vector<std::vector<float>>> pool(8);
  for (auto& batch : pool) {
    for (size_t i = 0; i < inputs.size(); ++i) {
      std::vector<float> values(inputs[i]->count());
      for (float& v : values) v = (i == 1) ? static_cast<float>(label(rng)) : pixel(rng);
      batch.push_back(std::move(values));
    }
  }
  auto run = [&](int n) {
    for (int s = 0; s < n; ++s) {
      const auto& batch = pool[s % pool.size()];
      for (size_t i = 0; i < inputs.size(); ++i)
        std::memcpy(inputs[i]->mutable_cpu_data(), batch[i].data(),
                    sizeof(float) * batch[i].size());
      solver->Step(1);
    }
  };
  run(warmup);
  const auto t0 = std::chrono::steady_clock::now();
  run(steps);
  const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
  std::printf("%.6f\n", dt.count());
  return 0;
}
