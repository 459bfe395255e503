// lepton-run: run an AOTInductor package (.pt2) exported by `lepton-compile export`, without
// Python.
//
//   lepton-run PACKAGE.pt2 INPUTS.lt [--model NAME] [--save-outputs OUT.lt] [--json]
//   lepton-run PACKAGE.pt2 INPUTS.lt --bench [--quick] [--trials N] [--window-s S]
//
// A package exported with a serving profile holds one model per batch size: "model" at the
// recommended batch, "batch_N" for the others (export.json lists them); --model picks one.
//
// Prints each output's shape and checksums (sum, sum of absolute values, in double). With
// --bench it measures latency percentiles and, on a GPU where libnvidia-ml can be loaded,
// NVML energy per inference, by the rules of lepton_compile.bench.protocol.Protocol: warmup
// of at least 3 runs and 0.2 s; 5 trials, each a window of at least 0.25 s and 3 runs
// (with NVML: at least max(5 s, 50 counter refreshes)); idle power over 5 s first, so
// energy is reported gross and above idle. --quick uses Protocol.quick()'s numbers.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "nvml_energy.h"
#include "raw_tensors.h"

namespace {

using clock_type = std::chrono::steady_clock;

struct Args {
  std::string package;
  std::string inputs;
  std::string save_outputs;
  std::string model = "model";
  bool bench = false;
  bool quick = false;
  bool json = false;
  int trials = 0;  // 0: the protocol's
  double window_s = 0;  // 0: the protocol's
};

// lepton_compile.bench.protocol.Protocol and Protocol.quick().
struct Protocol {
  int warmup_runs = 3;
  double warmup_s = 0.2;
  int trials = 5;
  double min_trial_s = 0.25;
  int min_runs = 3;
  int max_runs = 1000;
  double real_meter_min_s = 5.0;
  double min_meter_periods = 50.0;
  double idle_s = 5.0;

  static Protocol quick() {
    return {1, 0.02, 3, 0.05, 2, 200, 0.3, 3.0, 0.3};
  }
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "usage: lepton-run PACKAGE.pt2 INPUTS.lt [--model NAME] [--save-outputs OUT.lt] "
               "[--json] "
               "[--bench [--quick] [--trials N] [--window-s S]]\n"
            << "lepton-run: error: " << message << "\n";
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--bench") {
      a.bench = true;
    } else if (arg == "--quick") {
      a.quick = true;
    } else if (arg == "--json") {
      a.json = true;
    } else if (arg == "--model") {
      a.model = next();
    } else if (arg == "--save-outputs") {
      a.save_outputs = next();
    } else if (arg == "--trials") {
      a.trials = std::atoi(next().c_str());
      if (a.trials < 1) usage_error("--trials must be 1 or more");
    } else if (arg == "--window-s") {
      a.window_s = std::atof(next().c_str());
      if (!(a.window_s > 0)) usage_error("--window-s must be above 0");
    } else if (arg == "-h" || arg == "--help") {
      std::cout << "lepton-run PACKAGE.pt2 INPUTS.lt [--model NAME] [--save-outputs OUT.lt] "
                   "[--json] "
                   "[--bench [--quick] [--trials N] [--window-s S]]\n";
      std::exit(0);
    } else if (!arg.empty() && arg[0] == '-') {
      usage_error("unknown option " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 2) usage_error("give a package and an inputs file");
  a.package = positional[0];
  a.inputs = positional[1];
  return a;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string line; std::getline(ss, line);) out.push_back(line);
  return out;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

// numpy's default (linear) percentile of sorted values.
double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return NAN;
  const double pos = q / 100.0 * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const auto hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

class Model {
 public:
  Model(const std::string& package, const std::string& name) : loader_(package, name) {
    auto meta = loader_.get_metadata();
    device_ = c10::Device(meta.count("AOTI_DEVICE_KEY") ? meta["AOTI_DEVICE_KEY"] : "cpu");
    if (meta.count("lepton.input_names")) input_names_ = split_lines(meta["lepton.input_names"]);
    if (meta.count("lepton.output_names")) {
      output_names_ = split_lines(meta["lepton.output_names"]);
    }
  }

  // The file's tensors in the package's input order, on the package's device.
  std::vector<at::Tensor> inputs(const lepton::NamedTensors& file) const {
    std::vector<at::Tensor> out;
    if (input_names_.empty()) {
      for (const auto& [name, t] : file) out.push_back(t.to(device_));
      return out;
    }
    for (const auto& want : input_names_) {
      auto it = std::find_if(file.begin(), file.end(), [&](const auto& p) { return p.first == want; });
      if (it == file.end()) throw std::runtime_error("the inputs file has no tensor '" + want + "'");
      out.push_back(it->second.to(device_));
    }
    return out;
  }

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) {
    auto out = loader_.run(inputs);
    if (device_.is_cuda()) torch::cuda::synchronize();
    return out;
  }

  std::string output_name(size_t i) const {
    return i < output_names_.size() ? output_names_[i] : "output" + std::to_string(i);
  }
  const c10::Device& device() const { return device_; }

 private:
  torch::inductor::AOTIModelPackageLoader loader_;
  c10::Device device_{c10::kCPU};
  std::vector<std::string> input_names_, output_names_;
};

struct BenchResult {
  std::vector<double> latencies_ms;
  std::vector<double> window_s;
  int trials = 0;
  std::optional<double> joules_per_inference, idle_w, update_period_s;
  double total_joules = 0;
  long long metered_runs = 0;
  std::string energy_note;
};

BenchResult bench(Model& model, const std::vector<at::Tensor>& inputs, const Args& args) {
  Protocol p = args.quick ? Protocol::quick() : Protocol{};
  if (args.trials > 0) p.trials = args.trials;
  BenchResult r;
  std::unique_ptr<lepton::NvmlEnergy> meter;
  if (model.device().is_cuda()) {
    std::string why;
    meter = lepton::NvmlEnergy::open(std::max<int>(0, model.device().index()), &why);
    if (!meter) r.energy_note = why;
  } else {
    r.energy_note = "no energy meter for the CPU in lepton-run (NVML is for GPUs)";
  }
  // Warmup: both minimums (allocation and kernel selection; clocks settling).
  auto start = clock_type::now();
  for (int n = 0; n < p.warmup_runs ||
                  (std::chrono::duration<double>(clock_type::now() - start).count() < p.warmup_s &&
                   n < p.max_runs);
       ++n) {
    model.run(inputs);
  }
  double window = p.min_trial_s;
  if (meter) {
    r.update_period_s = meter->probe_update_period(2.0);
    const double period = r.update_period_s.value_or(0.1);
    window = std::max({p.min_trial_s, p.real_meter_min_s, p.min_meter_periods * period});
    const auto before = meter->millijoules();
    const double idle = std::max(p.idle_s, 2 * period);
    const auto t0 = clock_type::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(idle));
    const auto after = meter->millijoules();
    const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
    if (before && after) r.idle_w = (*after - *before) / 1e3 / secs;
  }
  if (args.window_s > 0) window = args.window_s;
  for (int trial = 0; trial < p.trials; ++trial) {
    auto e0 = meter ? meter->millijoules() : std::nullopt;
    const auto t_start = clock_type::now();
    int runs = 0;
    while (true) {
      const auto t0 = clock_type::now();
      model.run(inputs);
      const auto t1 = clock_type::now();
      r.latencies_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      ++runs;
      const double elapsed = std::chrono::duration<double>(t1 - t_start).count();
      if (runs >= p.max_runs || (runs >= p.min_runs && elapsed >= window)) break;
    }
    r.window_s.push_back(std::chrono::duration<double>(clock_type::now() - t_start).count());
    auto e1 = meter ? meter->millijoules() : std::nullopt;
    if (e0 && e1) {
      r.total_joules += (*e1 - *e0) / 1e3;
      r.metered_runs += runs;
    }
    ++r.trials;
  }
  if (r.metered_runs > 0) r.joules_per_inference = r.total_joules / r.metered_runs;
  return r;
}

std::string bench_json(const BenchResult& r) {
  std::vector<double> s = r.latencies_ms;
  std::sort(s.begin(), s.end());
  double mean = 0;
  for (double v : s) mean += v;
  mean = s.empty() ? NAN : mean / s.size();
  double window_total = 0;
  for (double w : r.window_s) window_total += w;
  std::ostringstream o;
  o << "{\"latency_ms\": {\"p50\": " << number(percentile(s, 50))
    << ", \"p90\": " << number(percentile(s, 90)) << ", \"p99\": " << number(percentile(s, 99))
    << ", \"mean\": " << number(mean) << "}, \"runs\": " << s.size()
    << ", \"trials\": " << r.trials << ", \"window_s_total\": " << number(window_total);
  if (r.joules_per_inference) {
    const double above =
        r.idle_w ? *r.joules_per_inference - *r.idle_w * window_total / r.metered_runs : NAN;
    o << ", \"energy_j\": {\"per_inference\": " << number(*r.joules_per_inference)
      << ", \"above_idle\": " << number(above) << ", \"idle_w\": "
      << number(r.idle_w.value_or(NAN)) << ", \"update_period_s\": "
      << number(r.update_period_s.value_or(NAN)) << ", \"method\": \"nvml\"}";
  } else {
    o << ", \"energy_j\": null, \"energy_note\": " << json_string(r.energy_note);
  }
  o << "}";
  return o.str();
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  try {
    lepton::NamedTensors file = lepton::read_tensors(args.inputs);
    Model model(args.package, args.model);
    const auto inputs = model.inputs(file);
    const auto outputs = model.run(inputs);
    lepton::NamedTensors named;
    std::ostringstream json;
    json << "{\"package\": " << json_string(args.package) << ", \"model\": "
         << json_string(args.model) << ", \"device\": "
         << json_string(model.device().str()) << ", \"outputs\": [";
    for (size_t i = 0; i < outputs.size(); ++i) {
      const at::Tensor t = outputs[i].cpu().to(at::kDouble);
      const double sum = t.sum().item<double>();
      const double abs_sum = t.abs().sum().item<double>();
      const std::string name = model.output_name(i);
      named.emplace_back(name, outputs[i]);
      std::ostringstream shape;
      for (int64_t d = 0; d < t.dim(); ++d) shape << (d ? "," : "") << t.size(d);
      json << (i ? ", " : "") << "{\"name\": " << json_string(name) << ", \"dtype\": "
           << json_string(lepton::dtype_name(outputs[i].scalar_type())) << ", \"shape\": ["
           << shape.str() << "], \"sum\": " << number(sum) << ", \"abs_sum\": "
           << number(abs_sum) << "}";
      if (!args.json) {
        std::cout << name << " " << lepton::dtype_name(outputs[i].scalar_type()) << " ["
                  << shape.str() << "] sum=" << number(sum) << " abs_sum=" << number(abs_sum)
                  << "\n";
      }
    }
    json << "]";
    if (!args.save_outputs.empty()) lepton::write_tensors(args.save_outputs, named);
    if (args.bench) {
      const BenchResult r = bench(model, inputs, args);
      const std::string b = bench_json(r);
      json << ", \"bench\": " << b;
      if (!args.json) std::cout << "bench " << b << "\n";
    }
    json << "}";
    if (args.json) std::cout << json.str() << "\n";
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));  // c10 errors carry a C++ backtrace after it
    std::cerr << "lepton-run: error: " << what << "\n";
    return 2;
  }
  return 0;
}
