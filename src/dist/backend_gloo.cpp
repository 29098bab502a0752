// The Gloo backend (CPU tensors). Gloo's own headers come from Debian's libgloo-dev: the torch
// wheel compiles Gloo in but ships none of its headers, and ProcessGroupGloo.hpp only needs the
// declarations (its members are pointers to Gloo objects, so the layout does not depend on them).
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <cstdlib>

#include "backends.h"

namespace moetron::dist::detail {

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store,
                                            int64_t rank, int64_t size,
                                            std::chrono::milliseconds timeout,
                                            const std::string& master_addr) {
  auto opts = c10d::ProcessGroupGloo::Options::create();
  opts->timeout = timeout;
  // GLOO_SOCKET_IFNAME picks the interface as in PyTorch; otherwise the address this host
  // resolves to (loopback when every rank is local).
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else if (master_addr == "127.0.0.1" || master_addr == "localhost") {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  } else {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  opts->threads = 2;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, static_cast<int>(rank),
                                                     static_cast<int>(size), opts);
}

}  // namespace moetron::dist::detail
