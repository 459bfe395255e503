#include "nvml_energy.h"

#include <dlfcn.h>

#include <chrono>
#include <thread>
#include <vector>

namespace lepton {

std::unique_ptr<NvmlEnergy> NvmlEnergy::open(unsigned index, std::string* why) {
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) lib = dlopen("libnvidia-ml.so", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    *why = "libnvidia-ml not found";
    return nullptr;
  }
  using Init = int (*)();
  using Handle = int (*)(unsigned, void**);
  auto init = reinterpret_cast<Init>(dlsym(lib, "nvmlInit_v2"));
  auto handle = reinterpret_cast<Handle>(dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
  auto energy = reinterpret_cast<int (*)(void*, unsigned long long*)>(
      dlsym(lib, "nvmlDeviceGetTotalEnergyConsumption"));
  auto shutdown = reinterpret_cast<int (*)()>(dlsym(lib, "nvmlShutdown"));
  if (!init || !handle || !energy || !shutdown) {
    *why = "libnvidia-ml lacks the energy counter API";
    dlclose(lib);
    return nullptr;
  }
  if (int rc = init(); rc != 0) {
    *why = "nvmlInit failed (code " + std::to_string(rc) + ")";
    dlclose(lib);
    return nullptr;
  }
  std::unique_ptr<NvmlEnergy> meter(new NvmlEnergy());
  meter->lib_ = lib;
  meter->get_energy_ = energy;
  meter->shutdown_ = shutdown;
  if (int rc = handle(index, &meter->device_); rc != 0) {
    *why = "no NVML device " + std::to_string(index) + " (code " + std::to_string(rc) + ")";
    return nullptr;  // the destructor shuts NVML down
  }
  if (!meter->millijoules()) {
    *why = "this GPU has no total-energy counter (Volta or newer needed)";
    return nullptr;
  }
  return meter;
}

NvmlEnergy::~NvmlEnergy() {
  if (shutdown_) shutdown_();
  if (lib_) dlclose(lib_);
}

std::optional<unsigned long long> NvmlEnergy::millijoules() const {
  unsigned long long mj = 0;
  if (device_ == nullptr || get_energy_(device_, &mj) != 0) return std::nullopt;
  return mj;
}

std::optional<double> NvmlEnergy::probe_update_period(double timeout_s) const {
  // Two changes of the counter bound one full period (the first change may come mid-way).
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  auto last = millijoules();
  std::vector<clock::time_point> changes;
  while (changes.size() < 3 &&
         std::chrono::duration<double>(clock::now() - start).count() < timeout_s) {
    std::this_thread::sleep_for(std::chrono::microseconds(500));
    auto now = millijoules();
    if (now && last && *now != *last) {
      changes.push_back(clock::now());
      last = now;
    }
  }
  if (changes.size() < 3) return std::nullopt;
  return std::chrono::duration<double>(changes[2] - changes[1]).count();
}

}  // namespace lepton
