// GPU energy from NVML's total-energy counter, with libnvidia-ml loaded at run time.
//
// dlopen rather than linking: the runner must start on machines without the NVIDIA driver
// (CPU packages), and a link against libnvidia-ml would make the loader refuse it there.
#pragma once

#include <memory>
#include <optional>
#include <string>

namespace lepton {

class NvmlEnergy {
 public:
  // The meter of GPU `index`, or nullptr with `why` set when NVML cannot be used here.
  static std::unique_ptr<NvmlEnergy> open(unsigned index, std::string* why);
  ~NvmlEnergy();

  // Millijoules since the driver loaded (a monotonic counter); nullopt if a read fails.
  std::optional<unsigned long long> millijoules() const;

  // Seconds between two refreshes of the counter, probed by polling (nullopt: not seen to
  // change within the probe's time; the caller assumes NVML's typical 0.1 s).
  std::optional<double> probe_update_period(double timeout_s) const;

 private:
  NvmlEnergy() = default;
  void* lib_ = nullptr;
  void* device_ = nullptr;
  int (*get_energy_)(void*, unsigned long long*) = nullptr;
  int (*shutdown_)() = nullptr;
};

}  // namespace lepton
