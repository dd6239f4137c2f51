// Dense (groups = 1) 3x3 convolution of one CLRB stage on tensor cores with fp32 accumulation: bf16 and fp16
// with mma.sync m16n8k16, fp32 through TF32 with m16n8k8 (as cuDNN does for fp32 when TF32 is allowed).
//
// Implicit GEMM per block: D[co][pixel] = sum over (ci, tap) of W[co][ci][tap] * X[ci][pixel + tap offset] for a
// 16x16 pixel tile and 16, 32 or 48 output channels (cout is padded to a multiple of 16: 43 -> 48, 86 -> 96, and
// split over blockIdx.z when the pixel tiles alone would leave SMs idle); A = weights, B = input pixels.
// The K loop walks the input channels in chunks of one 32-byte shared-memory row (16 channels of 2 bytes or 8 of
// 4 bytes: one mma k-step per tap), two stages deep: while the tensor cores work on one chunk, the next chunk's
// 18x18 halo is in flight from global memory (registers, then transposed into [pixel][channel] rows in shared
// memory) and its weights are copied with cp.async. Input channels past cin read as zero, so the buffer needs no
// channel padding.
//
// The two 16-byte halves of a row are swapped on every other group of four rows, so that the eight rows one
// ldmatrix reads (eight consecutive pixels, or eight consecutive output channels) fall in eight distinct bank
// groups without padding. The weights are packed on the device in exactly the shared-memory order
// (csakd_clrb_mma_pack) and copied verbatim. In bytes, the fragments of m16n8k8 tf32 are those of m16n8k16
// bf16/fp16, so one kernel body serves the three types.
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
constexpr int kRowBytes = 32;               // one shared-memory row: a chunk of input channels of one pixel
constexpr int kTaps = 9;
constexpr int kWarps = 8;                   // warp w computes tile rows 2w and 2w + 1 (four n-tiles of 8 pixels)
constexpr int kThreads = kWarps * 32;
constexpr int kLoadTasks = kHaloPixels * 2;                          // (halo pixel, 16-byte half row) pairs
constexpr int kLoadRounds = (kLoadTasks + kThreads - 1) / kThreads;  // 3
constexpr int kMaxMTiles = 3;                // m-tiles (16 output channels each) per block: 1, 2 or 3

// Storage of one element in shared memory and in the packed weight (fp32 goes in as TF32 bit patterns).
template <typename T>
using Raw = std::conditional_t<sizeof(T) == 2, uint16_t, uint32_t>;
template <typename T>
constexpr int kChunk = kRowBytes / sizeof(T);  // input channels per stage
template <typename T>
constexpr int kHalf = kChunk<T> / 2;           // channels per 16-byte half row

__host__ __device__ constexpr int cout_padded(int cout) { return (cout + 15) / 16 * 16; }
template <typename T>
__host__ __device__ constexpr int chunks_of(int cin) { return (cin + kChunk<T> - 1) / kChunk<T>; }

// Element offset of (row, k) in a [rows][kChunk] tile with the half swap described above.
template <typename T>
__host__ __device__ constexpr int swizzled(int row, int k) {
  return row * kChunk<T> + ((((k / kHalf<T>) ^ (row >> 2)) & 1) * kHalf<T>) + k % kHalf<T>;
}

template <int kMTiles>
__host__ __device__ constexpr int smem_bytes() {
  return 2 * (kHaloPixels + kTaps * kMTiles * 16) * kRowBytes;
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

// fp32 -> TF32 (round to nearest, ties away), the bit pattern mma reads.
__device__ __forceinline__ unsigned to_tf32(float v) {
  unsigned r = 0;
#ifdef CSAKD_HAS_MMA
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
#endif
  return r;
}

// The raw shared-memory value of one input or weight element (TF32-rounded for fp32).
template <typename T>
__device__ __forceinline__ Raw<T> load_raw(const T* p) {
  if constexpr (sizeof(T) == 2) {
    return __ldg(reinterpret_cast<const uint16_t*>(p));
  } else {
    return to_tf32(__ldg(p));
  }
}

// d += A (16 x one k-step, row) * B (one k-step x 8, col) with fp32 accumulators.
#define CSAKD_MMA(SHAPE, AB)                                                                                    \
  asm volatile("mma.sync.aligned." SHAPE ".row.col.f32." AB "." AB ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, " \
               "{%8, %9}, {%0, %1, %2, %3};\n"                                                                  \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                                 \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

template <typename T>
__device__ __forceinline__ void mma_step(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#ifdef CSAKD_HAS_MMA
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    CSAKD_MMA("m16n8k16", "bf16");
  } else if constexpr (std::is_same_v<T, __half>) {
    CSAKD_MMA("m16n8k16", "f16");
  } else {
    static_assert(std::is_same_v<T, float>, "mma_step takes bf16, fp16 or fp32 (as tf32)");
    CSAKD_MMA("m16n8k8", "tf32");
  }
#endif
}

// Block (tile, batch item, output-channel group blockIdx.z of kMTiles * 16 channels). Two blocks per SM: at most
// 128 registers (kMTiles = 3 spills 16 bytes).
template <typename T, int kMTiles>
__global__ void __launch_bounds__(kThreads, 2) dense_conv_kernel(const csakd_conv_args a) {
  using R = Raw<T>;
  constexpr int kC = kChunk<T>, kH = kHalf<T>;
  constexpr int kRows = kMTiles * 16;             // output channels of this block
  constexpr int kInStage = kHaloPixels * kC;      // elements per input stage
  constexpr int kWStage = kTaps * kRows * kC;     // elements per weight stage
  constexpr int kPerPiece = 16 / sizeof(R);       // elements per 16-byte piece (= kH)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  R* in_s = reinterpret_cast<R*>(smem_raw);  // [2][kHaloPixels][kC]
  R* w_s = in_s + 2 * kInStage;              // [2][kTaps][kRows][kC]

  const int H = a.height, W = a.width, cin = a.cin;
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int tiles_x = (W + kTile - 1) / kTile;
  const int x0 = (blockIdx.x % tiles_x) * kTile, y0 = (blockIdx.x / tiles_x) * kTile;
  const int b = blockIdx.y;
  const int cout_pad = cout_padded(a.cout), first_row = blockIdx.z * kRows;
  const T* in = static_cast<const T*>(a.input) + b * a.input_batch_stride;
  const R* packed_w = static_cast<const R*>(a.weight);
  const int chunks = chunks_of<T>(cin);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Global -> registers: half a row (kH channels of one halo pixel) per task, zero outside the image and past cin.
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
          const int c = chunk * kC + half * kH;
          const T* src = in + c * plane + static_cast<int64_t>(gy) * W + gx;
#pragma unroll
          for (int j = 0; j < kH; ++j) {
            const unsigned v = c + j < cin ? static_cast<unsigned>(load_raw(src + j * plane)) : 0u;
            if constexpr (sizeof(R) == 2) {
              words[j >> 1] |= v << (16 * (j & 1));
            } else {
              words[j] = v;
            }
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
        *reinterpret_cast<uint4*>(in_s + stage * kInStage + swizzled<T>(p, half * kH)) = staged[r];
      }
    }
  };
  // The block's rows of each tap: kRows * kC contiguous elements of the packed [chunk][tap][cout_pad][kC] weight
  // (a multiple of 16 rows, so the row swizzle is the same locally and in the packed weight).
  auto load_weights = [&](int chunk, int stage) {
    constexpr int kPiecesPerTap = kRows * kC / kPerPiece;
    R* dst = w_s + stage * kWStage;
    for (int i = tid; i < kTaps * kPiecesPerTap; i += kThreads) {
      const int tap = i / kPiecesPerTap, piece = i - tap * kPiecesPerTap;
      const R* src = packed_w + ((static_cast<int64_t>(chunk) * kTaps + tap) * cout_pad + first_row) * kC;
      cp_async_16(smem_addr(dst + i * kPerPiece), src + piece * kPerPiece);
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
    const R* ins = in_s + stage * kInStage;
    const R* ws = w_s + stage * kWStage;
#pragma unroll
    for (int tap = 0; tap < kTaps; ++tap) {
      const int ky = tap / 3, kx = tap % 3;
      // B fragments of the warp's four n-tiles: per tile row, pixels 0-7 and 8-15, each half row of channels.
      unsigned bfrag[2][4];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int px = ((lane >> 4) << 3) + (lane & 7);
        const int p = (warp * 2 + r + ky) * kHalo + px + kx;
        ldmatrix_x4(bfrag[r], smem_addr(ins + swizzled<T>(p, ((lane >> 3) & 1) * kH)));
      }
#pragma unroll
      for (int i = 0; i < kMTiles; ++i) {
        // A fragment: output channels i*16 .. i*16+15 (rows 0-7 / 8-15), each half row of channels.
        const int row = i * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
        unsigned afrag[4];
        ldmatrix_x4(afrag, smem_addr(ws + tap * kRows * kC + swizzled<T>(row, (lane >> 4) * kH)));
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          mma_step<T>(acc[i][r * 2 + 0], afrag, bfrag[r][0], bfrag[r][1]);
          mma_step<T>(acc[i][r * 2 + 1], afrag, bfrag[r][2], bfrag[r][3]);
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

// One thread per packed element: packed[((chunk * 9 + tap) * cout_pad + co) * kChunk + swizzled k] =
// w[co][chunk * kChunk + k][tap] (TF32-rounded for fp32), zero where co >= cout or the channel >= cin.
template <typename T>
__global__ void pack_kernel(const csakd_pack_args args) {
  constexpr int kC = kChunk<T>, kH = kHalf<T>;
  const csakd_pack_item item = args.items[blockIdx.y];
  const int cout_pad = cout_padded(item.cout);
  const int64_t total = static_cast<int64_t>(chunks_of<T>(item.cin)) * kTaps * cout_pad * kC;
  const T* w = static_cast<const T*>(item.weight);
  Raw<T>* packed = static_cast<Raw<T>*>(item.packed_weight);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int q = static_cast<int>(idx % kC);
    const int64_t row = idx / kC;  // (chunk * 9 + tap) * cout_pad + co
    const int co = static_cast<int>(row % cout_pad);
    const int64_t chunk_tap = row / cout_pad;
    const int tap = static_cast<int>(chunk_tap % kTaps), chunk = static_cast<int>(chunk_tap / kTaps);
    const int k = ((((q / kH) ^ (co >> 2)) & 1) * kH) + q % kH;  // inverse of swizzled(co, k)
    const int ci = chunk * kC + k;
    packed[idx] = (co < item.cout && ci < item.cin)
                      ? load_raw(w + (static_cast<int64_t>(co) * item.cin + ci) * kTaps + tap) : Raw<T>(0);
  }
  if (blockIdx.x == 0) {
    const T* bias = static_cast<const T*>(item.bias);
    for (int co = threadIdx.x; co < cout_pad; co += blockDim.x) {
      item.packed_bias[co] = co < item.cout ? to_float(bias[co]) : 0.f;
    }
  }
}

int64_t packed_weight_elems(int cin, int cout, int dtype) {
  const int64_t per_chunk = static_cast<int64_t>(kTaps) * cout_padded(cout);
  switch (dtype) {
    case CSAKD_FLOAT32: return chunks_of<float>(cin) * per_chunk * kChunk<float>;
    case CSAKD_BFLOAT16:
    case CSAKD_FLOAT16: return chunks_of<__half>(cin) * per_chunk * kChunk<__half>;
    default: return -1;
  }
}

}  // namespace
}  // namespace csakd_cuda

extern "C" int64_t csakd_clrb_mma_packed_weight_elems(int cin, int cout, int dtype) {
  return csakd_cuda::packed_weight_elems(cin, cout, dtype);
}

extern "C" int csakd_clrb_mma_packed_bias_elems(int cout) { return csakd_cuda::cout_padded(cout); }

extern "C" cudaError_t csakd_clrb_mma_pack(const csakd_pack_args* args, cudaStream_t stream) {
  using namespace csakd_cuda;
  if (args->count < 1 || args->count > CSAKD_CLRB_MAX_PACK) return cudaErrorInvalidValue;
  const dim3 grid(64, static_cast<unsigned>(args->count));
  switch (args->dtype) {
    case CSAKD_FLOAT32: pack_kernel<float><<<grid, 256, 0, stream>>>(*args); break;
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
    case CSAKD_FLOAT32: return dispatch_dense<float>(a, stream);
    case CSAKD_BFLOAT16: return dispatch_dense<__nv_bfloat16>(a, stream);
    case CSAKD_FLOAT16: return dispatch_dense<__half>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}
