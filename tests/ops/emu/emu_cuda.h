// A CPU emulator for the attention kernels' CUDA subset, for machines without a GPU. Not a
// simulator of timing or memory models: it runs every thread of a block as a fiber (ucontext)
// on one OS thread, switching only at barriers, and checks what can be checked on the CPU:
//   * results (the kernel source itself runs, with its indexing, masks, tiles and launch plan);
//   * barrier discipline: __syncthreads must be reached by every thread of the block, warp
//     collectives (__syncwarp, __shfl_xor_sync, WMMA ops) by all 32 lanes; a thread that exits
//     while others wait, or a set of fibers that all wait on different barriers, aborts;
//   * WMMA preconditions: 32-byte aligned pointers, ldm a multiple of 16 bytes;
//   * out-of-bounds shared / global accesses, when built with -fsanitize=address (shared memory
//     is a heap block of exactly the launch's dynamic size).
// Warp collectives synchronise at entry, so a lane cannot store a fragment before all lanes have
// loaded it (as on hardware, where the op is collective).
//
// Use: force-include this header, compile the .cu files as C++ after tests/ops/emu/emulate.py
// rewrote `kernel<<<grid, block, smem, stream>>>(args)` launches into emu::launch(...) calls and
// the `extern __shared__` declarations into emu::shared_mem().
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace emu {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "emu: %s\n", what);
  std::abort();
}

struct Fiber {
  ucontext_t ctx{};
  std::unique_ptr<char[]> stack;
  int tid = 0;
  enum State { kRunnable, kBlockBarrier, kWarpBarrier, kDone } state = kRunnable;
};

struct Block {
  dim3 block_idx, grid_dim, block_dim;
  std::vector<Fiber> fibers;
  ucontext_t scheduler{};
  int current = -1;
  int block_waiting = 0;
  int block_or = 0, block_or_result = 0;
  std::vector<int> warp_waiting;
  std::vector<float> shfl;  // one slot per thread
  unsigned char* smem = nullptr;
};

inline Block*& current_block() {
  static Block* b = nullptr;
  return b;
}

inline Fiber& self() {
  Block* b = current_block();
  return b->fibers[b->current];
}

inline void yield() {
  Block* b = current_block();
  swapcontext(&b->fibers[b->current].ctx, &b->scheduler);
}

inline void block_barrier(int value, int* result) {
  Block* b = current_block();
  Fiber& f = self();
  b->block_or |= value;
  f.state = Fiber::kBlockBarrier;
  if (++b->block_waiting == static_cast<int>(b->fibers.size())) {
    b->block_or_result = b->block_or;
    b->block_or = 0;
    b->block_waiting = 0;
    for (auto& g : b->fibers) g.state = Fiber::kRunnable;
  }
  yield();
  if (result != nullptr) *result = b->block_or_result;
}

inline void warp_barrier() {
  Block* b = current_block();
  Fiber& f = self();
  const int w = f.tid / 32, first = w * 32;
  const int last = first + 32 < static_cast<int>(b->fibers.size())
                       ? first + 32
                       : static_cast<int>(b->fibers.size());
  f.state = Fiber::kWarpBarrier;
  if (++b->warp_waiting[w] == last - first) {
    b->warp_waiting[w] = 0;
    for (int i = first; i < last; ++i) b->fibers[i].state = Fiber::kRunnable;
  }
  yield();
}

// ---- the launch ------------------------------------------------------------------------------

struct Kernel {
  std::function<void()> body;
};

inline void fiber_entry(unsigned lo, unsigned hi) {
  auto* k = reinterpret_cast<Kernel*>((static_cast<uintptr_t>(hi) << 32) | lo);
  k->body();
  self().state = Fiber::kDone;
  swapcontext(&self().ctx, &current_block()->scheduler);
}

inline size_t& launches() {
  static size_t n = 0;
  return n;
}

template <typename F, typename... A>
void launch(F kernel, dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t, A... args) {
  ++launches();
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (block.y != 1 || block.z != 1) fail("only 1-D blocks are emulated");
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        Block b;
        b.block_idx = dim3(x, y, z);
        b.grid_dim = grid;
        b.block_dim = block;
        b.fibers.resize(threads);
        b.warp_waiting.assign((threads + 31) / 32, 0);
        b.shfl.assign(threads, 0.0f);
        // 128-byte aligned like the hardware's shared window; filled with 0xff (NaN as fp32,
        // bf16 and fp16): reads of never-written shared memory poison the results.
        const size_t n = (smem_bytes + 127) / 128 * 128 + 128;
        std::unique_ptr<unsigned char, void (*)(void*)> smem(
            static_cast<unsigned char*>(std::aligned_alloc(128, n)), std::free);
        std::memset(smem.get(), 0xff, n);
        b.smem = smem.get();
        current_block() = &b;
        Kernel k{[&] { kernel(args...); }};
        const uintptr_t kp = reinterpret_cast<uintptr_t>(&k);
        constexpr size_t kStack = 128 * 1024;
        for (int t = 0; t < threads; ++t) {
          Fiber& f = b.fibers[t];
          f.tid = t;
          f.stack.reset(new char[kStack]);
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.get();
          f.ctx.uc_stack.ss_size = kStack;
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, reinterpret_cast<void (*)()>(fiber_entry), 2,
                      static_cast<unsigned>(kp & 0xffffffffu), static_cast<unsigned>(kp >> 32));
        }
        // Priority scheduling: always resume the first runnable thread in index order (the
        // last with EMU_SCHEDULE=reverse), so one warp runs as far ahead of the others as the
        // barriers allow. A missing __syncthreads between a writer and a reader then shows as
        // a stale read in one of the two orders.
        static const bool reverse = [] {
          const char* s = std::getenv("EMU_SCHEDULE");
          return s != nullptr && std::strcmp(s, "reverse") == 0;
        }();
        for (;;) {
          int next = -1;
          for (int i = 0; i < threads && next < 0; ++i) {
            const int t = reverse ? threads - 1 - i : i;
            if (b.fibers[t].state == Fiber::kRunnable) next = t;
          }
          if (next < 0) {
            int done = 0, blk = 0, wrp = 0;
            for (auto& f : b.fibers) {
              done += f.state == Fiber::kDone;
              blk += f.state == Fiber::kBlockBarrier;
              wrp += f.state == Fiber::kWarpBarrier;
            }
            if (done == threads) break;
            std::fprintf(stderr,
                         "emu: deadlock in block (%u,%u,%u): %d done, %d at a block barrier, %d "
                         "at a warp barrier\n",
                         x, y, z, done, blk, wrp);
            std::abort();
          }
          b.current = next;
          swapcontext(&b.scheduler, &b.fibers[next].ctx);
        }
        current_block() = nullptr;
      }
    }
  }
}

inline unsigned char* shared_mem() {
  return current_block()->smem;
}

}  // namespace emu

// threadIdx.x etc. as expressions: small proxies with an `x` member evaluated per fiber.
struct EmuThreadIdx {
  struct X {
    operator unsigned() const { return static_cast<unsigned>(emu::self().tid); }
  } x;
  static constexpr unsigned y = 0, z = 0;
};
struct EmuBlockIdx {
  struct X {
    operator unsigned() const { return emu::current_block()->block_idx.x; }
  } x;
  struct Y {
    operator unsigned() const { return emu::current_block()->block_idx.y; }
  } y;
  struct Z {
    operator unsigned() const { return emu::current_block()->block_idx.z; }
  } z;
};
struct EmuDim {
  bool grid;
  struct X {
    bool grid;
    operator unsigned() const {
      return grid ? emu::current_block()->grid_dim.x : emu::current_block()->block_dim.x;
    }
  } x{grid};
  struct Y {
    bool grid;
    operator unsigned() const {
      return grid ? emu::current_block()->grid_dim.y : emu::current_block()->block_dim.y;
    }
  } y{grid};
};
inline EmuThreadIdx threadIdx;
inline EmuBlockIdx blockIdx;
inline EmuDim blockDim{false};
inline EmuDim gridDim{true};

inline void __syncthreads() {
  emu::block_barrier(0, nullptr);
}
inline int __syncthreads_or(int v) {
  int r = 0;
  emu::block_barrier(v != 0, &r);
  return r;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) emu::fail("__syncwarp with a partial mask");
  emu::warp_barrier();
}
inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
  if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync with a partial mask");
  auto* b = emu::current_block();
  const int tid = emu::self().tid;
  emu::warp_barrier();  // every lane arrives
  b->shfl[tid] = v;
  emu::warp_barrier();  // every lane wrote
  const float out = b->shfl[(tid & ~31) | ((tid & 31) ^ lane_mask)];
  emu::warp_barrier();  // every lane read before the slots are reused
  return out;
}

// ---- runtime API stubs (an H200's limits) -----------------------------------------------------

extern "C" {
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *v = 232448;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *v = 233472;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *v = 132;
      return cudaSuccess;
    default:
      return cudaErrorInvalidValue;
  }
}
inline cudaError_t cudaGetLastError() {
  return cudaSuccess;
}
}
template <typename K>
cudaError_t emu_func_set_attribute(K, cudaFuncAttribute, int bytes) {
  return bytes <= 232448 ? cudaSuccess : cudaErrorInvalidValue;
}
#define cudaFuncSetAttribute emu_func_set_attribute

// ---- WMMA --------------------------------------------------------------------------------------

namespace nvcuda::wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  float v[16][16];
};

inline void check(const void* p, unsigned ldm, size_t elem) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu::fail("wmma: pointer not 32-byte aligned");
  if ((ldm * elem) % 16 != 0) emu::fail("wmma: ldm not a multiple of 16 bytes");
}

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  emu::warp_barrier();
  check(p, ldm, sizeof(T));
  constexpr bool kCol = std::is_same_v<Layout, col_major>;
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      const T x = kCol ? p[j * ldm + i] : p[i * ldm + j];
      if constexpr (std::is_same_v<T, float>) {
        f.v[i][j] = x;
      } else if constexpr (std::is_same_v<T, __half>) {
        f.v[i][j] = __half2float(x);
      } else {
        f.v[i][j] = __bfloat162float(x);
      }
    }
  }
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
  emu::warp_barrier();
  check(p, ldm, sizeof(float));
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      f.v[i][j] = layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i];
    }
  }
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float x) {
  emu::warp_barrier();
  for (auto& row : f.v) {
    for (float& e : row) e = x;
  }
}
template <typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  emu::warp_barrier();
  float out[16][16];
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      float s = c.v[i][j];
      for (int k = 0; k < 16; ++k) s += a.v[i][k] * b.v[k][j];
      out[i][j] = s;
    }
  }
  std::memcpy(d.v, out, sizeof(out));
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  emu::warp_barrier();
  check(p, ldm, sizeof(float));
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.v[i][j];
    }
  }
}
}  // namespace nvcuda::wmma
