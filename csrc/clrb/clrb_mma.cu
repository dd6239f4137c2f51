// Dense (groups = 1) 3x3 convolution of one CLRB stage on tensor cores, bf16/fp16 in, fp32 accumulation.
//
// Implicit GEMM per block: D[co][pixel] = sum over (ci, tap) of W[co][ci][tap] * X[ci][pixel + tap offset] for a
// 16x16 pixel tile and 16, 32 or 48 output channels (cout is padded to a multiple of 16: 43 -> 48, 86 -> 96, and
// split over blockIdx.z when the pixel tiles alone would leave SMs idle), with mma.sync m16n8k16 (A = weights,
// B = input pixels). The K loop walks the input channels in chunks of 16, two
// shared-memory stages deep: while the tensor cores work on one chunk, the next chunk's 18x18 halo is in flight
// from global memory (registers, then transposed into [pixel][channel] rows in shared memory) and its weights
// are copied with cp.async. Input channels past cin are zero, so cin needs no padding in the buffer.
//
// Shared-memory rows hold 16 channels (32 bytes); the two 16-byte halves of a row are swapped on every other
// group of four rows, so that the eight rows one ldmatrix reads (eight consecutive pixels, or eight consecutive
// output channels) fall in eight distinct bank groups without padding. The weights are packed on the device in
// exactly the shared-memory order (csakd_clrb_mma_pack) and copied verbatim.
//
// The epilogue adds the bias and applies the LReLU (conv_1..4, stored into the buffer slot) or the residual
// (conv_5), see clrb_device.cuh.
#include <type_traits>

#include "clrb_device.cuh"

namespace csakd_cuda {
namespace {

constexpr int kTile = 16;                   // output tile kTile x kTile pixels
constexpr int kHalo = kTile + 2;            // the 3x3 taps read one pixel around the tile
constexpr int kHaloPixels = kHalo * kHalo;  // 324
constexpr int kChunk = 16;                  // input channels per stage: one mma k-step per tap
constexpr int kTaps = 9;
constexpr int kWarps = 8;                   // warp w computes tile rows 2w and 2w + 1 (four n-tiles of 8 pixels)
constexpr int kThreads = kWarps * 32;
constexpr int kLoadTasks = kHaloPixels * 2;                          // (halo pixel, 8-channel half) pairs
constexpr int kLoadRounds = (kLoadTasks + kThreads - 1) / kThreads;  // 3
constexpr int kMaxMTiles = 3;                // m-tiles (16 output channels each) per block: 1, 2 or 3

__host__ __device__ constexpr int cout_padded(int cout) { return (cout + 15) / 16 * 16; }
__host__ __device__ constexpr int chunks_of(int cin) { return (cin + kChunk - 1) / kChunk; }

// Element offset of (row, k) in a [rows][16] tile with the half swap described above.
__host__ __device__ constexpr int swizzled(int row, int k) {
  return row * kChunk + ((((k >> 3) ^ (row >> 2)) & 1) << 3) + (k & 7);
}

template <int kMTiles>
__host__ __device__ constexpr int smem_bytes() {
  return 2 * (kHaloPixels * kChunk + kTaps * kMTiles * 16 * kChunk) * 2;
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define CSAKD_HAS_MMA 1
#endif

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
#ifdef CSAKD_HAS_MMA
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

__device__ __forceinline__ void cp_async_16(unsigned dst, const void* src) {
#ifdef CSAKD_HAS_MMA
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef CSAKD_HAS_MMA
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#ifdef CSAKD_HAS_MMA
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
#endif
}

// d += A (16x16, row) * B (16x8, col) with fp32 accumulators; AB names the input type in the PTX mnemonic.
#define CSAKD_MMA_16816(AB)                                                                                     \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." AB "." AB ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "    \
               "{%8, %9}, {%0, %1, %2, %3};\n"                                                                  \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                                 \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#ifdef CSAKD_HAS_MMA
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    CSAKD_MMA_16816("bf16");
  } else {
    static_assert(std::is_same_v<T, __half>, "mma_16816 takes bf16 or fp16");
    CSAKD_MMA_16816("f16");
  }
#endif
}

// Block (tile, batch item, output-channel group blockIdx.z of kMTiles * 16 channels). Two blocks per SM: at most
// 128 registers (kMTiles = 3 spills 16 bytes).
template <typename T, int kMTiles>
__global__ void __launch_bounds__(kThreads, 2) dense_conv_kernel(const csakd_conv_args a) {
  constexpr int kRows = kMTiles * 16;                  // output channels of this block
  constexpr int kInStage = kHaloPixels * kChunk;       // elements per input stage
  constexpr int kWStage = kTaps * kRows * kChunk;      // elements per weight stage
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* in_s = reinterpret_cast<uint16_t*>(smem_raw);  // [2][kHaloPixels][16]
  uint16_t* w_s = in_s + 2 * kInStage;                      // [2][kTaps][kRows][16]

  const int H = a.height, W = a.width, cin = a.cin;
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int tiles_x = (W + kTile - 1) / kTile;
  const int x0 = (blockIdx.x % tiles_x) * kTile, y0 = (blockIdx.x / tiles_x) * kTile;
  const int b = blockIdx.y;
  const int cout_pad = cout_padded(a.cout), first_row = blockIdx.z * kRows;
  const uint16_t* in = static_cast<const uint16_t*>(a.input) + b * a.input_batch_stride;
  const uint16_t* packed_w = static_cast<const uint16_t*>(a.weight);
  const int chunks = chunks_of(cin);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Global -> registers: 8 channels of one halo pixel per task, zero outside the image and past cin.
  uint4 staged[kLoadRounds];
  auto load_input = [&](int chunk) {
#pragma unroll
    for (int r = 0; r < kLoadRounds; ++r) {
      const int t = tid + r * kThreads;
      unsigned words[4] = {0u, 0u, 0u, 0u};
      if (t < kLoadTasks) {
        const int half = t / kHaloPixels, p = t - half * kHaloPixels;
        const int gy = y0 - 1 + p / kHalo, gx = x0 - 1 + p % kHalo;
        if (gy >= 0 && gy < H && gx >= 0 && gx < W) {
          const int c = chunk * kChunk + half * 8;
          const uint16_t* src = in + c * plane + static_cast<int64_t>(gy) * W + gx;
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const unsigned v = c + j < cin ? static_cast<unsigned>(__ldg(src + j * plane)) : 0u;
            words[j >> 1] |= v << (16 * (j & 1));
          }
        }
      }
      staged[r] = make_uint4(words[0], words[1], words[2], words[3]);
    }
  };
  // Registers -> shared: one 16-byte store per task, into the swizzled [pixel][channel] rows.
  auto store_input = [&](int stage) {
#pragma unroll
    for (int r = 0; r < kLoadRounds; ++r) {
      const int t = tid + r * kThreads;
      if (t < kLoadTasks) {
        const int half = t / kHaloPixels, p = t - half * kHaloPixels;
        *reinterpret_cast<uint4*>(in_s + stage * kInStage + swizzled(p, half * 8)) = staged[r];
      }
    }
  };
  // The block's rows of each tap: kRows * 16 contiguous elements of the packed [chunk][tap][cout_pad][16] weight
  // (a multiple of 16 rows, so the row swizzle is the same locally and in the packed weight).
  auto load_weights = [&](int chunk, int stage) {
    constexpr int kPiecesPerTap = kRows * kChunk / 8;  // 16-byte pieces
    uint16_t* dst = w_s + stage * kWStage;
    for (int i = tid; i < kTaps * kPiecesPerTap; i += kThreads) {
      const int tap = i / kPiecesPerTap, piece = i - tap * kPiecesPerTap;
      const uint16_t* src = packed_w + ((static_cast<int64_t>(chunk) * kTaps + tap) * cout_pad + first_row) * kChunk;
      cp_async_16(smem_addr(dst + i * 8), src + piece * 8);
    }
    cp_async_commit();
  };

  float acc[kMTiles][4][4];
#pragma unroll
  for (int i = 0; i < kMTiles; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  load_weights(0, 0);
  load_input(0);
  store_input(0);
  cp_async_wait_all();
  __syncthreads();

  for (int chunk = 0; chunk < chunks; ++chunk) {
    const int stage = chunk & 1;
    const bool has_next = chunk + 1 < chunks;
    if (has_next) {  // the other stage was last read before the previous iteration's barrier
      load_weights(chunk + 1, stage ^ 1);
      load_input(chunk + 1);
    }
    const uint16_t* ins = in_s + stage * kInStage;
    const uint16_t* ws = w_s + stage * kWStage;
#pragma unroll
    for (int tap = 0; tap < kTaps; ++tap) {
      const int ky = tap / 3, kx = tap % 3;
      // B fragments of the warp's four n-tiles: per tile row, pixels 0-7 and 8-15, channels 0-7 and 8-15.
      unsigned bfrag[2][4];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int px = ((lane >> 4) << 3) + (lane & 7);
        const int p = (warp * 2 + r + ky) * kHalo + px + kx;
        ldmatrix_x4(bfrag[r], smem_addr(ins + swizzled(p, ((lane >> 3) & 1) * 8)));
      }
#pragma unroll
      for (int i = 0; i < kMTiles; ++i) {
        // A fragment: output channels i*16 .. i*16+15 (rows 0-7 / 8-15), channels 0-7 / 8-15.
        const int row = i * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
        unsigned afrag[4];
        ldmatrix_x4(afrag, smem_addr(ws + tap * kRows * kChunk + swizzled(row, (lane >> 4) * 8)));
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          mma_16816<T>(acc[i][r * 2 + 0], afrag, bfrag[r][0], bfrag[r][1]);
          mma_16816<T>(acc[i][r * 2 + 1], afrag, bfrag[r][2], bfrag[r][3]);
        }
      }
    }
    if (has_next) store_input(stage ^ 1);
    cp_async_wait_all();
    __syncthreads();
  }

  // Accumulator (i, j, e): output channel first_row + i*16 + lane/4 (+8 for e >= 2), tile row 2*warp + j/2,
  // tile column (j%2)*8 + 2*(lane%4) + e%2.
  const float* bias = static_cast<const float*>(a.bias);
#pragma unroll
  for (int i = 0; i < kMTiles; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int co = first_row + i * 16 + (lane >> 2) + (e >> 1) * 8;
      if (co >= a.cout) continue;
      const float bv = __ldg(bias + co);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int y = y0 + warp * 2 + (j >> 1);
        const int x = x0 + (j & 1) * 8 + (lane & 3) * 2 + (e & 1);
        if (y < H && x < W) store_epilogue<T>(a, b, co, static_cast<int64_t>(y) * W + x, acc[i][j][e] + bv);
      }
    }
  }
}

template <typename T, int kMTiles>
cudaError_t launch_dense(const csakd_conv_args& a, unsigned tiles, cudaStream_t stream) {
  constexpr int smem = smem_bytes<kMTiles>();
  static_assert(smem <= 48 * 1024, "within the default dynamic shared-memory limit (no opt-in attribute)");
  const unsigned splits = static_cast<unsigned>(cout_padded(a.cout) / (kMTiles * 16));
  dense_conv_kernel<T, kMTiles><<<dim3(tiles, static_cast<unsigned>(a.batch), splits), kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

// m-tiles per block: the most (fewest reloads of the input halo) that divide cout's m-tiles and still give at
// least one block per SM; the fewest when even that falls short (small images at batch 1).
template <typename T>
cudaError_t dispatch_dense(const csakd_conv_args& a, cudaStream_t stream) {
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const unsigned tiles = static_cast<unsigned>((a.width + kTile - 1) / kTile) *
                         static_cast<unsigned>((a.height + kTile - 1) / kTile);
  const int m_tiles = cout_padded(a.cout) / 16;
  int per_block = 1;
  for (int m = kMaxMTiles; m >= 1; --m) {
    if (m_tiles % m == 0 && static_cast<int64_t>(tiles) * a.batch * (m_tiles / m) >= sms) {
      per_block = m;
      break;
    }
  }
  switch (per_block) {
    case 3: return launch_dense<T, 3>(a, tiles, stream);
    case 2: return launch_dense<T, 2>(a, tiles, stream);
    default: return launch_dense<T, 1>(a, tiles, stream);
  }
}
static_assert(kMaxMTiles == 3, "dispatch_dense instantiates 1..3 m-tiles per block");

// One thread per packed element: packed[((chunk * 9 + tap) * cout_pad + co) * 16 + swizzled k] =
// w[co][chunk * 16 + k][tap], zero where co >= cout or the channel >= cin.
template <typename T>
__global__ void pack_kernel(const csakd_pack_args args) {
  const csakd_pack_item item = args.items[blockIdx.y];
  const int cout_pad = cout_padded(item.cout);
  const int64_t total = static_cast<int64_t>(chunks_of(item.cin)) * kTaps * cout_pad * kChunk;
  const uint16_t* w = static_cast<const uint16_t*>(item.weight);
  uint16_t* packed = static_cast<uint16_t*>(item.packed_weight);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int q = static_cast<int>(idx % kChunk);
    const int64_t row = idx / kChunk;  // (chunk * 9 + tap) * cout_pad + co
    const int co = static_cast<int>(row % cout_pad);
    const int64_t chunk_tap = row / cout_pad;
    const int tap = static_cast<int>(chunk_tap % kTaps), chunk = static_cast<int>(chunk_tap / kTaps);
    const int k = ((((q >> 3) ^ (co >> 2)) & 1) << 3) + (q & 7);  // inverse of swizzled(co, k)
    const int ci = chunk * kChunk + k;
    packed[idx] = (co < item.cout && ci < item.cin)
                      ? w[(static_cast<int64_t>(co) * item.cin + ci) * kTaps + tap] : static_cast<uint16_t>(0);
  }
  if (blockIdx.x == 0) {
    const T* bias = static_cast<const T*>(item.bias);
    for (int co = threadIdx.x; co < cout_pad; co += blockDim.x) {
      item.packed_bias[co] = co < item.cout ? to_float(bias[co]) : 0.f;
    }
  }
}

}  // namespace
}  // namespace csakd_cuda

extern "C" int64_t csakd_clrb_mma_packed_weight_elems(int cin, int cout) {
  using namespace csakd_cuda;
  return static_cast<int64_t>(chunks_of(cin)) * kTaps * cout_padded(cout) * kChunk;
}

extern "C" int csakd_clrb_mma_packed_bias_elems(int cout) { return csakd_cuda::cout_padded(cout); }

extern "C" cudaError_t csakd_clrb_mma_pack(const csakd_pack_args* args, cudaStream_t stream) {
  using namespace csakd_cuda;
  if (args->count < 1 || args->count > CSAKD_CLRB_MAX_PACK) return cudaErrorInvalidValue;
  const dim3 grid(64, static_cast<unsigned>(args->count));
  switch (args->dtype) {
    case CSAKD_BFLOAT16: pack_kernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(*args); break;
    case CSAKD_FLOAT16: pack_kernel<__half><<<grid, 256, 0, stream>>>(*args); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

extern "C" cudaError_t csakd_clrb_mma_conv(const csakd_conv_args* args, cudaStream_t stream) {
  using namespace csakd_cuda;
  const csakd_conv_args& a = *args;
  if (a.groups != 1 || a.cout < 1 || a.cout > 16 * 65535 || a.cin < 1 || a.batch > 65535) {
    return cudaErrorInvalidValue;
  }
  if (a.batch == 0 || a.height == 0 || a.width == 0) return cudaSuccess;
  switch (a.dtype) {
    case CSAKD_BFLOAT16: return dispatch_dense<__nv_bfloat16>(a, stream);
    case CSAKD_FLOAT16: return dispatch_dense<__half>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}
