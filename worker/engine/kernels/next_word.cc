// lstmq's fused CPU kernel for one decoding step (see shared/kernels/__init__.py, which builds it
// on first use, and shared/generate.py, which calls it).
//
// LstmqBestWord: for every row of a [rows, width] float32 logits matrix, in one pass over the
// row while it sits in the core's cache:
//   best      the first index of the row maximum (tf.argmax's choice),
//   top       the maximum,
//   near      whether another entry lies within `tolerance * (1 + |top|)` of the maximum (a tie
//             within float32 rounding: the caller recomputes such rows the model's own way),
//   sumexp    when `scored` (0 otherwise): sum_j exp(logit_j - top), so that the row's
//             log-sum-exp is top + log(sumexp); with `bounded` (the caller knows |logit| < 60),
//             sum_j exp(logit_j), log-sum-exp log(sumexp), summed in the same pass as the max.
// TensorFlow's ops need a pass over the matrix (in memory, not in cache) for each of these, and
// its argmax is not vectorized; here one pass streams the row in, the exponentials are a
// polynomial the compiler vectorizes, and the first maximum is found in the cached row.
//
// LstmqDenseBest: LstmqBestWord's outputs straight from the top layer's h and the packed output
// layer, the logits reduced in registers as they are computed, never written out (see below).
//
// LstmqDenseSample: LstmqDenseBest and LstmqSample's draw in one op, each row's uniform hashed in
// the op (see below).
//
// LstmqLstmStep: one step of an LSTM layer, its matmuls included (see below).
//
// LstmqSample: the sampled word of every row with temperature > 0 (the others keep `greedy`),
// drawn with the row's uniform u by inverse CDF, as shared/generate.py's TensorFlow version:
//   neither top_k nor top_p: over the real words in id order, weights exp((logit - top) / T)
//     (exp(logit) at T = 1 when `bounded`), located through block sums;
//   top_k and/or top_p: over the words ranked by logit (ties: lower id first), keeping the first
//     top_k ranks and the ranks whose preceding mass is below top_p x the mass of the whole
//     vocabulary at T. The candidates are the top_k largest (64 for top_p alone), found among
//     the logits above a bound from the block maxima (no sort of the vocabulary), and the whole
//     vocabulary is ranked only when a nucleus reaches past them.
// The arithmetic (exp polynomial, summation order) differs from TensorFlow's: a draw that falls
// within float rounding of a boundary between two words may go the other way than there.
//
// Rows are independent: a row's results never depend on the rest of the batch.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <utility>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace lstmq {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

// Vectors of the GCC/Clang vector extensions, of the CPU's widest registers (16 floats with
// AVX-512, else 8: a wider type than the registers is split by the compiler, and where it runs
// out of registers it falls back to scalar code).
#if defined(__AVX512F__)
typedef float Vec __attribute__((vector_size(64)));
typedef int32_t VecInts __attribute__((vector_size(64)));
constexpr int kTileRows = 12;              // LstmqDenseBest's tiles: 24 accumulators of 32 zmm registers
#else
typedef float Vec __attribute__((vector_size(32)));
typedef int32_t VecInts __attribute__((vector_size(32)));
constexpr int kTileRows = 6;               // 12 accumulators of 16 ymm registers
#endif
constexpr int kVecWidth = sizeof(Vec) / sizeof(float);
constexpr int kLanes = 64;                 // lanes of pass 1: kVectors x kVecWidth
constexpr int kVectors = kLanes / kVecWidth;   // independent accumulators

// 2^n for a whole number n in [-126, 127], by building the float's exponent bits.
inline float pow2(float n) { return __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23); }
template <typename T>
inline T pow2(T n) {   // of a vector of floats
  using Bits = decltype(n < n);
  const Bits bits = (__builtin_convertvector(n, Bits) + 127) << 23;
  return (T)bits;
}

// exp(x) of a float or of a Vec (Cephes' single-precision polynomial, about 1 ulp): exp(x) =
// 2^n exp(r), r = x - n ln 2 in [-ln2/2, ln2/2]. Below -87 the result is 0 (as float32's exp
// nearly is: at most 1.6e-38); above 88 it is exp(88) (the callers never pass more).
template <typename T>
inline T exp_of(T x) {
  const T zero = T{}, low = zero - 87.0f, high = zero + 88.0f;
  const auto underflow = x < low;
  x = underflow ? low : (x > high ? high : x);
  // n = x / ln 2 rounded to the nearest integer (adding and subtracting 1.5 * 2^23 rounds;
  // std::floor would not vectorize)
  const T n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  T r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  T p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return underflow ? zero : p * pow2(n);
}

// tanh (Cephes' single-precision tanhf: a polynomial below 0.625, else 1 - 2 / (exp(2|x|) + 1)).
inline float tanh_float(float x) {
  const float a = std::fabs(x);
  const float z = x * x;
  float small = -5.70498872745e-3f;
  small = small * z + 2.06390887954e-2f;
  small = small * z - 5.37397155531e-2f;
  small = small * z + 1.33314422036e-1f;
  small = small * z - 3.33332819422e-1f;
  small = small * z * x + x;
  const float e = exp_of(-2.0f * a);   // exp(-2|x|)
  const float large = (1.0f - e) / (1.0f + e);
  return a < 0.625f ? small : (x < 0.0f ? -large : large);
}

inline float sigmoid_float(float x) {
  const float e = exp_of(-std::fabs(x));   // exp(-|x|)
  const float inverse = 1.0f / (1.0f + e);
  return x >= 0.0f ? inverse : e * inverse;
}

// Pass 1, streaming the row in from memory: in kVectors independent vector accumulators (one long
// dependency chain would leave the vector units idle; the vector extensions keep them in
// registers), each lane's largest and second largest entry and, with kExp, the sum of exp(logit)
// (safe without subtracting the maximum when the caller knows every logit is bounded, see
// `bounded`).

template <bool kExp>
void stream_row(const float* row, int64_t width, float* first_out, float* second_out, float* sum_out) {
  Vec first[kVectors], second[kVectors], sum[kVectors];
  for (int v = 0; v < kVectors; ++v) {
    first[v] = second[v] = Vec{} - INFINITY;
    sum[v] = Vec{};
  }
  const int64_t step = kVectors * kVecWidth, whole = width - width % step;
  for (int64_t start = 0; start < whole; start += step) {
    for (int v = 0; v < kVectors; ++v) {
      Vec x;
      std::memcpy(&x, row + start + v * kVecWidth, sizeof x);
      const Vec lower = x < first[v] ? x : first[v];
      second[v] = lower > second[v] ? lower : second[v];
      first[v] = x > first[v] ? x : first[v];
      if (kExp) sum[v] += exp_of(x);
    }
  }
  for (int v = 0; v < kVectors; ++v)
    for (int k = 0; k < kVecWidth; ++k) {
      first_out[v * kVecWidth + k] = first[v][k];
      second_out[v * kVecWidth + k] = second[v][k];
      sum_out[v * kVecWidth + k] = sum[v][k];
    }
  for (int64_t j = whole; j < width; ++j) {
    const int k = static_cast<int>(j - whole);
    const float x = row[j];
    const float lower = x < first_out[k] ? x : first_out[k];
    second_out[k] = lower > second_out[k] ? lower : second_out[k];
    first_out[k] = x > first_out[k] ? x : first_out[k];
    if (kExp) sum_out[k] += exp_of(x);
  }
}

// The row's maximum and runner-up from the lanes' largest and second largest entries (the row's
// two largest are among them), and whether the runner-up is a near tie: within
// `tolerance * (1 + |maximum|)` of the maximum (LstmqBestWord's `near`).
struct TopTwo {
  float maximum = -INFINITY, runner_up = -INFINITY;
  bool near(float tolerance) const { return runner_up >= maximum - tolerance * (1.0f + std::fabs(maximum)); }
};

inline TopTwo top_two(const float* first, const float* second, int lanes) {
  TopTwo top;
  for (int k = 0; k < lanes; ++k) {
    for (const float x : {first[k], second[k]}) {
      if (x > top.maximum) {
        top.runner_up = top.maximum;
        top.maximum = x;
      } else if (x > top.runner_up) {
        top.runner_up = x;
      }
    }
  }
  return top;
}

void best_word(const float* row, int64_t width, float tolerance, bool scored, bool bounded,
               int32_t* best, float* top, bool* near, float* sumexp) {
  float first[kLanes], second[kLanes], lanes_sum[kLanes];
  if (scored && bounded) {
    stream_row<true>(row, width, first, second, lanes_sum);
  } else {
    stream_row<false>(row, width, first, second, lanes_sum);
  }
  const TopTwo row_top = top_two(first, second, kLanes);
  const float maximum = row_top.maximum;
  // the first index holding the maximum: entry j went to lane j % kLanes, so only the lanes whose
  // largest entry is the maximum (one, unless there is a tie) are searched, in the cached row
  int64_t index = width;
  for (int k = 0; k < kLanes; ++k) {
    if (first[k] != maximum) continue;
    for (int64_t j = k; j < index; j += kLanes) {
      if (row[j] == maximum) {
        index = j;
        break;
      }
    }
  }
  float sum = 0.0f;
  if (scored && bounded) {
    for (int k = 0; k < kLanes; ++k) sum += lanes_sum[k];
  } else if (scored) {   // pass 2 over the cached row: exp(logit - maximum) never overflows
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < width; ++j) sum += exp_of(row[j] - maximum);
  }
  *best = static_cast<int32_t>(index);
  *top = maximum;
  *near = row_top.near(tolerance);
  *sumexp = sum;
}

class BestWordOp : public OpKernel {
 public:
  explicit BestWordOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("scored", &scored_));
    OP_REQUIRES_OK(context, context->GetAttr("tolerance", &tolerance_));
    OP_REQUIRES_OK(context, context->GetAttr("bounded", &bounded_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& logits = context->input(0);
    OP_REQUIRES(context, logits.dims() == 2,
                absl::InvalidArgumentError("LstmqBestWord: logits must be a matrix [rows, width]"));
    const int64_t rows = logits.dim_size(0), width = logits.dim_size(1);
    OP_REQUIRES(context, width > 0 && width < (int64_t{1} << 31),
                absl::InvalidArgumentError("LstmqBestWord: logits need 1 to 2^31 - 1 columns"));
    Tensor *best, *top, *near, *sumexp;
    const TensorShape shape({rows});
    OP_REQUIRES_OK(context, context->allocate_output(0, shape, &best));
    OP_REQUIRES_OK(context, context->allocate_output(1, shape, &top));
    OP_REQUIRES_OK(context, context->allocate_output(2, shape, &near));
    OP_REQUIRES_OK(context, context->allocate_output(3, shape, &sumexp));
    const float* data = logits.flat<float>().data();
    int32_t* best_data = best->flat<int32_t>().data();
    float* top_data = top->flat<float>().data();
    bool* near_data = near->flat<bool>().data();
    float* sumexp_data = sumexp->flat<float>().data();
    const bool scored = scored_, bounded = bounded_;
    const float tolerance = tolerance_;
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        best_word(data + i * width, width, tolerance, scored, bounded, best_data + i, top_data + i, near_data + i,
                  sumexp_data + i);
    };
    auto* threads = context->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(threads->num_threads, threads->workers, rows, /*cost_per_unit=*/width * (scored ? 24 : 6),
                        work);
  }

 private:
  bool scored_, bounded_;
  float tolerance_;
};

// LstmqDenseBest: LstmqBestWord's outputs straight from the top layer's h, without the logits
// matrix: the logits h W + b are computed in register tiles of kTileRows rows x kPanel words and
// reduced at once (first maximum per lane, runner-up, sum of exp(logit)), so they never travel
// to memory and back, twice, as a matmul's output does. The caller packs W and b once:
// panels[p, k, j] = W[k, p kPanel + j] for k < units, panels[p, units, j] = b[p kPanel + j], the
// columns ordered real words first, then the special tokens (columns real .. real + special:
// counted in sumexp, never chosen), then padding (W 0, b -80: exp(-80) = 2e-35, never chosen). sumexp is
// sum_j exp(logit_j) over real words and special tokens (the caller uses this op only when every
// logit is bounded, see LstmqBestWord's `bounded`), 0 unless `scored`. With `keep_logits` the
// logits (bias added, in the panels' column order) are also written out, [rows, panels x width],
// for a sampling step: its greedy rows then get the same numbers as in a greedy step, bit for
// bit (otherwise [0, panels x width]).
//
// Every row's arithmetic is fixed (the same tile code, the same order of additions whatever the
// batch): a row's logits never depend on the rows beside it, as those of a BLAS matmul may (one
// row and many rows take different kernels), which would make a row's samples and
// log-probabilities depend on its batch.
constexpr int kPanel = 2 * kVecWidth;      // words per packed panel
constexpr int64_t kChunkPanels = 512 / kPanel;   // panels reused from L2 by a group's tiles (~300 kB at 150 units)

inline Vec fused_multiply_add(Vec a, Vec b, Vec c) {
#if defined(__AVX512F__)
  return (Vec)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
  return (Vec)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

// exp(x) of a Vec for x in [-87, 87] only (no clamping: the caller's logits are bounded, its
// padding is -80): exp_of's reduction, a degree-5 polynomial for exp(r) fitted for relative error
// (at most 2.4e-7 over the range, against exp_of's 1 ulp), in fused multiply-adds; about two
// thirds of exp_of's instructions, where the exponentials are a sixth of a greedy step's work.
inline Vec exp_bounded(Vec x) {
  const Vec n = fused_multiply_add(x, Vec{} + 1.44269504088896341f, Vec{} + 12582912.0f) - 12582912.0f;
  Vec r = fused_multiply_add(n, Vec{} - 0.693359375f, x);
  r = fused_multiply_add(n, Vec{} + 2.12194440e-4f, r);
  Vec p = fused_multiply_add(r, Vec{} + 8.291719661e-3f, Vec{} + 4.191504947e-2f);
  p = fused_multiply_add(p, r, Vec{} + 1.666766293e-1f);
  p = fused_multiply_add(p, r, Vec{} + 4.999889889e-1f);
  p = fused_multiply_add(p, r, Vec{} + 9.999996661e-1f);
  p = fused_multiply_add(p, r, Vec{} + 1.000000071e+00f);
  return p * pow2(n);
}

struct LaneState {   // per row: each lane's largest and second largest logit, the first index of the largest, sum exp
  Vec first, second, sum;
  VecInts index;
};

inline void lane_update(LaneState& state, Vec x, VecInts column) {
  const Vec lower = x < state.first ? x : state.first;
  state.second = lower > state.second ? lower : state.second;
  const VecInts greater = x > state.first;
  state.first = greater ? x : state.first;
  state.index = greater ? column : state.index;
}

inline Vec broadcast(const float* x) {
#if defined(__AVX512F__)
  return (Vec)_mm512_set1_ps(*x);
#elif defined(__AVX__)
  return (Vec)_mm256_broadcast_ss(x);
#else
  Vec v;
  for (int k = 0; k < kVecWidth; ++k) v[k] = *x;
  return v;
#endif
}

// logits of kTileRows rows (h rows `h[r]`, `units` wide) x one panel, into out (without the
// bias). The accumulators are locals, written out once: stores through a pointer could alias
// the floats of h (a vector may alias its elements) and would be made at every step.
inline void tile_panel(const float* const* h, const float* panel, int64_t units, Vec (*out)[2]) {
  Vec acc[kTileRows][2];
  for (int r = 0; r < kTileRows; ++r) acc[r][0] = acc[r][1] = Vec{};
  const float* rows[kTileRows];
  for (int r = 0; r < kTileRows; ++r) rows[r] = h[r];
  for (int64_t k = 0; k < units; ++k) {
    Vec w0, w1;
    std::memcpy(&w0, panel + k * kPanel, sizeof w0);
    std::memcpy(&w1, panel + k * kPanel + kVecWidth, sizeof w1);
    for (int r = 0; r < kTileRows; ++r) {
      const Vec a = broadcast(rows[r] + k);
      acc[r][0] = fused_multiply_add(a, w0, acc[r][0]);
      acc[r][1] = fused_multiply_add(a, w1, acc[r][1]);
    }
  }
  for (int r = 0; r < kTileRows; ++r) {
    out[r][0] = acc[r][0];
    out[r][1] = acc[r][1];
  }
}

// Calls body(first_row, end_row) for groups of whole tiles of rows, on TensorFlow's CPU threads:
// each thread takes the next group from a shared counter, about eight groups per thread, so that
// a thread the operating system takes away for a moment (a worker's host thread on the same
// cores) holds up one group, not a fixed share of the batch. At most `max_group_tiles` per group.
template <typename Body>
void for_row_groups(OpKernelContext* context, int64_t rows, int64_t max_group_tiles, Body body) {
  auto* threads = context->device()->tensorflow_cpu_worker_threads();
  const int64_t parallel = std::max(1, threads->num_threads);
  const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
  const int64_t group_tiles = std::max<int64_t>(1, std::min<int64_t>(max_group_tiles, tiles / (8 * parallel)));
  const int64_t groups = (tiles + group_tiles - 1) / group_tiles;
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t, int64_t) {
    for (int64_t group; (group = next.fetch_add(1)) < groups;) {
      const int64_t first_row = group * group_tiles * kTileRows;
      body(first_row, std::min(rows, first_row + group_tiles * kTileRows));
    }
  };
  ::tensorflow::Shard(parallel, threads->workers, std::min(groups, parallel), /*cost_per_unit=*/int64_t{1} << 30, work);
}

// The h rows of the tile at `tile_row`; rows past the end repeat the last (their results dropped).
inline void tile_rows(const float* data, int64_t width, int64_t rows, int64_t tile_row, const float** out) {
  for (int r = 0; r < kTileRows; ++r) out[r] = data + std::min(tile_row + r, rows - 1) * width;
}

// LstmqDenseSample's per-row inputs and outputs (see sample_rows, after LstmqSample's code).
struct SampleRows {
  const float *temperature, *top_p;
  const int32_t *top_k, *position;
  const uint64_t* base;
  int32_t* choice;
  float* chosen;
};

// The choice and its logit of rows first_row .. end_row - 1, whose logits (real words first) are
// at logits + (row - first_row) * stride: a sampling row's draw, a greedy row's `best` and `top`.
void sample_rows(const SampleRows& sample, int64_t first_row, int64_t end_row, const float* logits, int64_t stride,
                 int32_t columns, const int32_t* best, const float* top);

class DenseBestOp : public OpKernel {
 public:
  explicit DenseBestOp(OpKernelConstruction* context, bool sampling = false) : OpKernel(context), sampling_(sampling) {
    OP_REQUIRES_OK(context, context->GetAttr("real", &real_));
    OP_REQUIRES_OK(context, context->GetAttr("scored", &scored_));
    OP_REQUIRES_OK(context, context->GetAttr("tolerance", &tolerance_));
    OP_REQUIRES_OK(context, context->GetAttr("keep_logits", &keep_logits_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor &h = context->input(0), &panels = context->input(1);
    OP_REQUIRES(context, h.dims() == 2 && panels.dims() == 3 && panels.dim_size(2) == kPanel &&
                             panels.dim_size(1) == h.dim_size(1) + 1,
                absl::InvalidArgumentError("LstmqDenseBest: h must be [rows, units], panels [panels, units + 1, "
                                           "LstmqPanelWidth()]"));
    const int64_t rows = h.dim_size(0), units = h.dim_size(1), count = panels.dim_size(0);
    OP_REQUIRES(context, real_ > 0 && real_ <= count * kPanel && count * kPanel < (int64_t{1} << 31),
                absl::InvalidArgumentError("LstmqDenseBest: real must be 1 .. the panels' columns"));
    Tensor *best, *top, *near, *sumexp;
    const TensorShape shape({rows});
    OP_REQUIRES_OK(context, context->allocate_output(0, shape, &best));
    OP_REQUIRES_OK(context, context->allocate_output(1, shape, &top));
    OP_REQUIRES_OK(context, context->allocate_output(2, shape, &near));
    OP_REQUIRES_OK(context, context->allocate_output(3, shape, &sumexp));
    Tensor* logits;
    const int64_t width = count * kPanel;
    OP_REQUIRES_OK(context, context->allocate_output(4, keep_logits_ ? TensorShape({rows, width}) : TensorShape({0, width}),
                                                     &logits));
    float* logits_data = keep_logits_ ? logits->flat<float>().data() : nullptr;
    SampleRows sample{};
    if (sampling_) {
      for (int input = 2; input < 7; ++input)
        OP_REQUIRES(context, context->input(input).dims() == 1 && context->input(input).dim_size(0) == rows,
                    absl::InvalidArgumentError("LstmqDenseSample: every per-row input must be a vector of rows"));
      Tensor *choice, *chosen;
      OP_REQUIRES_OK(context, context->allocate_output(5, shape, &choice));
      OP_REQUIRES_OK(context, context->allocate_output(6, shape, &chosen));
      sample = {context->input(2).flat<float>().data(), context->input(4).flat<float>().data(),
                context->input(3).flat<int32_t>().data(), context->input(6).flat<int32_t>().data(),
                context->input(5).flat<uint64_t>().data(), choice->flat<int32_t>().data(),
                chosen->flat<float>().data()};
    }
    if (rows == 0) return;
    const float* h_data = h.flat<float>().data();
    const float* packed = panels.flat<float>().data();
    int32_t* best_data = best->flat<int32_t>().data();
    float* top_data = top->flat<float>().data();
    bool* near_data = near->flat<bool>().data();
    float* sumexp_data = sumexp->flat<float>().data();
    const bool scored = scored_;
    const float tolerance = tolerance_;
    const int32_t real = real_;
    const int64_t panel_size = (units + 1) * kPanel;
    VecInts lane_column;
    for (int k = 0; k < kVecWidth; ++k) lane_column[k] = k;
    const bool sampling = sampling_;
    for_row_groups(context, rows, /*max_group_tiles=*/8, [&](int64_t first_row, int64_t end_row) {
      std::vector<LaneState> states(end_row - first_row);
      // where the group's logits go: the output, or for sampling a buffer of this thread's, which
      // a group of rows fills and sample_rows reads while it is still in cache
      thread_local std::vector<float> buffer;
      float* group_logits = nullptr;
      if (logits_data != nullptr) {
        group_logits = logits_data + first_row * width;
      } else if (sampling) {
        buffer.resize(static_cast<size_t>(end_row - first_row) * width);
        group_logits = buffer.data();
      }
      for (auto& state : states) {
        state.first = state.second = Vec{} - INFINITY;
        state.sum = Vec{};
        state.index = VecInts{};
      }
      for (int64_t chunk = 0; chunk < count; chunk += kChunkPanels) {
        const int64_t chunk_end = std::min(count, chunk + kChunkPanels);
        for (int64_t tile_row = first_row; tile_row < end_row; tile_row += kTileRows) {
          const float* h_rows[kTileRows];
          tile_rows(h_data, units, rows, tile_row, h_rows);
          const int valid = static_cast<int>(std::min<int64_t>(kTileRows, end_row - tile_row));
          LaneState* tile_states = states.data() + (tile_row - first_row);
          for (int64_t p = chunk; p < chunk_end; ++p) {
            Vec acc[kTileRows][2];
            const float* panel = packed + p * panel_size;
            tile_panel(h_rows, panel, units, acc);
            Vec b0, b1;
            std::memcpy(&b0, panel + units * kPanel, sizeof b0);
            std::memcpy(&b1, panel + units * kPanel + kVecWidth, sizeof b1);
            const VecInts column0 = lane_column + static_cast<int32_t>(p * kPanel);
            const VecInts column1 = column0 + kVecWidth;
            const Vec none = Vec{} - INFINITY;
            for (int r = 0; r < valid; ++r) {
              Vec x0 = acc[r][0] + b0, x1 = acc[r][1] + b1;   // the model's order: matmul, then bias
              LaneState& state = tile_states[r];
              if (group_logits != nullptr) {
                float* out = group_logits + (tile_row - first_row + r) * width + p * kPanel;
                std::memcpy(out, &x0, sizeof x0);
                std::memcpy(out + kVecWidth, &x1, sizeof x1);
              }
              if (scored) state.sum += exp_bounded(x0) + exp_bounded(x1);
              x0 = column0 < real ? x0 : none;
              x1 = column1 < real ? x1 : none;
              lane_update(state, x0, column0);
              lane_update(state, x1, column1);
            }
          }
        }
      }
      for (int64_t row = first_row; row < end_row; ++row) {
        const LaneState& state = states[row - first_row];
        float first[kVecWidth], second[kVecWidth], sum = 0.0f;
        std::memcpy(first, &state.first, sizeof first);
        std::memcpy(second, &state.second, sizeof second);
        const TopTwo row_top = top_two(first, second, kVecWidth);
        const float maximum = row_top.maximum;
        for (int k = 0; k < kVecWidth; ++k) sum += state.sum[k];
        int32_t index = real;
        for (int k = 0; k < kVecWidth; ++k)
          if (state.first[k] == maximum && state.index[k] < index) index = state.index[k];
        best_data[row] = index < real ? index : 0;   // 0 for a row of NaN
        top_data[row] = maximum;
        near_data[row] = row_top.near(tolerance);
        sumexp_data[row] = scored ? sum : 0.0f;
      }
      if (sampling) sample_rows(sample, first_row, end_row, group_logits, width, real, best_data, top_data);
    });
  }

 private:
  int32_t real_;
  bool scored_, keep_logits_;
  const bool sampling_;
  float tolerance_;
};

// LstmqDenseSample: LstmqDenseBest with LstmqSample's draw, row by row as a group of rows' logits
// are done (from a per-thread buffer in cache, not a [rows, width] matrix written and read back by
// another op), and each row's uniform hashed here from its stream state and position (the
// SplitMix64 of shared/generate.py's _uniforms, the same numbers). Its outputs: LstmqDenseBest's,
// then `choice` (the sampled word of a row with temperature > 0, else `best`) and `chosen` (its
// logit; `top` for a greedy row). The caller replaces a near-tie greedy row's choice when it
// recomputes that row.
class DenseSampleOp : public DenseBestOp {
 public:
  explicit DenseSampleOp(OpKernelConstruction* context) : DenseBestOp(context, /*sampling=*/true) {}
};

// The output shapes of LstmqDenseBest and LstmqDenseSample: a vector of rows each, but the logits
// (output 4), a matrix.
absl::Status dense_shapes(::tensorflow::shape_inference::InferenceContext* c) {
  ::tensorflow::shape_inference::ShapeHandle h;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &h));
  auto rows = c->Vector(c->Dim(h, 0));
  for (int i = 0; i < c->num_outputs(); ++i)
    c->set_output(i, i == 4 ? c->Matrix(c->UnknownDim(), c->UnknownDim()) : rows);
  return absl::OkStatus();
}

REGISTER_OP("LstmqDenseBest")
    .Input("h: float")
    .Input("panels: float")
    .Output("best: int32")
    .Output("top: float")
    .Output("near: bool")
    .Output("sumexp: float")
    .Output("logits: float")
    .Attr("real: int")
    .Attr("scored: bool = true")
    .Attr("tolerance: float = 1e-6")
    .Attr("keep_logits: bool = false")
    .SetShapeFn(dense_shapes);

REGISTER_KERNEL_BUILDER(Name("LstmqDenseBest").Device(::tensorflow::DEVICE_CPU), DenseBestOp);

REGISTER_OP("LstmqDenseSample")
    .Input("h: float")
    .Input("panels: float")
    .Input("temperature: float")
    .Input("top_k: int32")
    .Input("top_p: float")
    .Input("base: uint64")
    .Input("position: int32")
    .Output("best: int32")
    .Output("top: float")
    .Output("near: bool")
    .Output("sumexp: float")
    .Output("logits: float")
    .Output("choice: int32")
    .Output("chosen: float")
    .Attr("real: int")
    .Attr("scored: bool = true")
    .Attr("tolerance: float = 1e-6")
    .Attr("keep_logits: bool = false")
    .SetShapeFn(dense_shapes);

REGISTER_KERNEL_BUILDER(Name("LstmqDenseSample").Device(::tensorflow::DEVICE_CPU), DenseSampleOp);

// LstmqLstmStep: one step of an LSTM layer with Keras's default activations (tanh, sigmoid) and
// gate order (i, f, c~, o): z = (x W + h U) + b, c' = sigmoid(f) c + sigmoid(i) tanh(c~),
// h' = sigmoid(o) tanh(c'). h U (and, with `project`, x W) are computed by the tile code above
// from packed panels (shared/kernels.pack_matrix: [panels, rows of U, width], columns padded to
// whole panels), so that a row's state never depends on the rest of the batch; without `project`
// the input is the bottom layer's table of x W for every word, [vocabulary, 4 units], and each
// row takes the row of its token. With `masked`, a row whose token is 0 (padding, in a prompt
// shorter than the longest) keeps its state. The gather, the gates and the masking are done in
// one pass per row while its z is in cache, instead of a dozen TensorFlow ops.
class LstmStepOp : public OpKernel {
 public:
  explicit LstmStepOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("project", &project_));
    OP_REQUIRES_OK(context, context->GetAttr("masked", &masked_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor &input = context->input(0), &tokens = context->input(1), &h = context->input(2),
                 &c = context->input(3), &kernel = context->input(4), &recurrent = context->input(5),
                 &bias = context->input(6);
    OP_REQUIRES(context, input.dims() == 2 && h.dims() == 2 && c.dims() == 2 && recurrent.dims() == 3 &&
                             kernel.dims() == 3 && bias.dims() == 1 && tokens.dims() == 1,
                absl::InvalidArgumentError("LstmqLstmStep: input, h, c are matrices, tokens a vector, kernel and "
                                           "recurrent packed panels, bias a vector"));
    const int64_t rows = h.dim_size(0), units = h.dim_size(1), gates = 4 * units;
    const int64_t count = recurrent.dim_size(0), width = count * kPanel;
    const int64_t inputs = project_ ? input.dim_size(1) : 0;
    OP_REQUIRES(context,
                c.dim_size(0) == rows && c.dim_size(1) == units && tokens.dim_size(0) == rows &&
                    (!project_ || input.dim_size(0) == rows) &&
                    bias.dim_size(0) == gates && recurrent.dim_size(1) == units && recurrent.dim_size(2) == kPanel &&
                    width >= gates && width < gates + kPanel &&
                    (project_ ? kernel.dim_size(0) == count && kernel.dim_size(1) == inputs &&
                                    kernel.dim_size(2) == kPanel
                              : input.dim_size(1) == gates),
                absl::InvalidArgumentError("LstmqLstmStep: shapes must be input [vocabulary, 4 units] (or [rows, "
                                           "inputs] with project), tokens [rows], h and c [rows, units], kernel "
                                           "[panels, inputs, width], recurrent [panels, units, width], bias "
                                           "[4 units]"));
    const int32_t* token = tokens.flat<int32_t>().data();
    if (!project_) {
      const int64_t vocabulary = input.dim_size(0);
      for (int64_t row = 0; row < rows; ++row)
        OP_REQUIRES(context, token[row] >= 0 && token[row] < vocabulary,
                    absl::InvalidArgumentError(absl::StrCat("LstmqLstmStep: token ", token[row], " of row ", row,
                                                            " is outside the table's ", vocabulary, " rows")));
    }
    Tensor *h_out, *c_out;
    OP_REQUIRES_OK(context, context->allocate_output(0, h.shape(), &h_out));
    OP_REQUIRES_OK(context, context->allocate_output(1, c.shape(), &c_out));
    if (rows == 0) return;
    const float *x = input.flat<float>().data(), *h_data = h.flat<float>().data(), *c_data = c.flat<float>().data(),
                *w = project_ ? kernel.flat<float>().data() : nullptr, *u = recurrent.flat<float>().data(),
                *b = bias.flat<float>().data();
    float *h_new = h_out->flat<float>().data(), *c_new = c_out->flat<float>().data();
    const bool project = project_, masked = masked_;
    for_row_groups(context, rows, /*max_group_tiles=*/4, [&](int64_t first_row, int64_t end_row) {
      std::vector<float> z(kTileRows * width);
      for (int64_t tile_row = first_row; tile_row < end_row; tile_row += kTileRows) {
        const float *h_rows[kTileRows], *x_rows[kTileRows];
        tile_rows(h_data, units, rows, tile_row, h_rows);
        if (project) tile_rows(x, inputs, rows, tile_row, x_rows);
        for (int64_t p = 0; p < count; ++p) {
          Vec hu[kTileRows][2], xw[kTileRows][2];
          tile_panel(h_rows, u + p * units * kPanel, units, hu);
          if (project) tile_panel(x_rows, w + p * inputs * kPanel, inputs, xw);
          for (int r = 0; r < kTileRows; ++r) {
            if (project) {   // Keras's order: (x W + h U) + b
              hu[r][0] = xw[r][0] + hu[r][0];
              hu[r][1] = xw[r][1] + hu[r][1];
            }
            std::memcpy(&z[r * width + p * kPanel], &hu[r][0], sizeof(Vec));
            std::memcpy(&z[r * width + p * kPanel + kVecWidth], &hu[r][1], sizeof(Vec));
          }
        }
        const int64_t valid = std::min<int64_t>(kTileRows, end_row - tile_row);
        for (int64_t r = 0; r < valid; ++r) {
          const int64_t row = tile_row + r;
          if (masked && token[row] == 0) {   // padding: the state stays
            std::memcpy(h_new + row * units, h_data + row * units, units * sizeof(float));
            std::memcpy(c_new + row * units, c_data + row * units, units * sizeof(float));
            continue;
          }
          float* zr = &z[r * width];
          if (project) {
#pragma omp simd
            for (int64_t k = 0; k < gates; ++k) zr[k] += b[k];
          } else {   // (x W + h U) + b
            const float* xr = x + static_cast<int64_t>(token[row]) * gates;
#pragma omp simd
            for (int64_t k = 0; k < gates; ++k) zr[k] = (xr[k] + zr[k]) + b[k];
          }
          const float* cr = c_data + row * units;
          float *hr = h_new + row * units, *nr = c_new + row * units;
#pragma omp simd
          for (int64_t k = 0; k < units; ++k) {
            const float i = sigmoid_float(zr[k]);
            const float f = sigmoid_float(zr[units + k]);
            const float g = tanh_float(zr[2 * units + k]);
            const float o = sigmoid_float(zr[3 * units + k]);
            const float cell = f * cr[k] + i * g;
            nr[k] = cell;
            hr[k] = o * tanh_float(cell);
          }
        }
      }
    });
  }

 private:
  bool project_, masked_;
};

REGISTER_OP("LstmqLstmStep")
    .Input("input: float")
    .Input("tokens: int32")
    .Input("h: float")
    .Input("c: float")
    .Input("kernel: float")
    .Input("recurrent: float")
    .Input("bias: float")
    .Output("h_out: float")
    .Output("c_out: float")
    .Attr("project: bool = false")
    .Attr("masked: bool = false")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(2));
      c->set_output(1, c->input(2));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("LstmqLstmStep").Device(::tensorflow::DEVICE_CPU), LstmStepOp);

class PanelWidthOp : public OpKernel {   // the words per panel LstmqDenseBest takes (this CPU's)
 public:
  explicit PanelWidthOp(OpKernelConstruction* context) : OpKernel(context) {}
  void Compute(OpKernelContext* context) override {
    Tensor* width;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({}), &width));
    width->scalar<int32_t>()() = kPanel;
  }
};

REGISTER_OP("LstmqPanelWidth").Output("width: int32").SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
  c->set_output(0, c->Scalar());
  return absl::OkStatus();
});
REGISTER_KERNEL_BUILDER(Name("LstmqPanelWidth").Device(::tensorflow::DEVICE_CPU), PanelWidthOp);



constexpr int kBlock = 16;          // words per block of the plain draw's block sums
constexpr int kNucleusCandidates = 64;

// Ranking order: larger logit first, equal logits by lower id.
struct Better {
  bool operator()(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) const {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  }
};

// Ranks (0 = best) of `n` values with their ids, in the Better order, by counting for each value
// the values better than it: branch-free and vectorized, where a comparison sort of random logits
// mispredicts most of its branches. For small n only (n^2 comparisons).
void rank_small(const float* values, const int32_t* ids, int32_t n, int32_t* ranks) {
  for (int32_t i = 0; i < n; ++i) {
    const float v = values[i];
    const int32_t id = ids[i];
    int32_t rank = 0;
#pragma omp simd reduction(+ : rank)
    for (int32_t j = 0; j < n; ++j) rank += static_cast<int32_t>((values[j] > v) | ((values[j] == v) & (ids[j] < id)));
    ranks[i] = rank;
  }
}

constexpr int32_t kSmallRanking = 512;   // candidates ranked by counting; more by sorting

// The `count` largest logits of the row's first `columns` (ties: lower id first), best first.
// A lower bound t of the count-th largest logit: the count-th largest of any count or more
// distinct logits. When count <= kLanes, the two largest of each of kLanes strided lanes, from one
// streaming pass; else the maxima of blocks of kBlock words. One scan then
// collects the few logits >= t, and only those are ranked.
struct Largest {
  std::vector<float> values, maxima;
  std::vector<int32_t> ids, ranks;
  std::vector<std::pair<float, int32_t>> pairs;

  void operator()(const float* row, int32_t columns, int32_t count, std::vector<std::pair<float, int32_t>>& best) {
    const int32_t blocks = (columns + kBlock - 1) / kBlock;
    float bound = -INFINITY;
    if (count <= kLanes && columns >= 4 * kLanes) {
      // the lanes' two largest logits: 2 kLanes distinct logits from one streaming pass
      float top2[2 * kLanes], unused[kLanes];
      stream_row<false>(row, columns, top2, top2 + kLanes, unused);
      std::nth_element(top2, top2 + (count - 1), top2 + 2 * kLanes, std::greater<float>());
      bound = top2[count - 1];
    } else if (count < blocks) {
      maxima.resize(blocks);
      for (int32_t b = 0; b < blocks; ++b) {
        const int32_t start = b * kBlock, end = start + kBlock < columns ? start + kBlock : columns;
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (int32_t j = start; j < end; ++j) m = row[j] > m ? row[j] : m;
        maxima[b] = m;
      }
      std::nth_element(maxima.begin(), maxima.begin() + (count - 1), maxima.end(), std::greater<float>());
      bound = maxima[count - 1];
    }
    values.clear();
    ids.clear();
    int32_t j = 0;
#if defined(__AVX512F__)   // a compare per 16 logits; a scalar branch per logit is several times slower
    const __m512 wide = _mm512_set1_ps(bound);
    for (; j + 16 <= columns; j += 16) {
      for (uint32_t mask = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + j), wide, _CMP_GE_OQ); mask; mask &= mask - 1) {
        const int32_t at = j + __builtin_ctz(mask);
        values.push_back(row[at]);
        ids.push_back(at);
      }
    }
#elif defined(__AVX2__)
    const __m256 wide = _mm256_set1_ps(bound);
    for (; j + 8 <= columns; j += 8) {
      for (uint32_t mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + j), wide, _CMP_GE_OQ)); mask;
           mask &= mask - 1) {
        const int32_t at = j + __builtin_ctz(mask);
        values.push_back(row[at]);
        ids.push_back(at);
      }
    }
#endif
    for (; j < columns; ++j) {
      if (row[j] >= bound) {
        values.push_back(row[j]);
        ids.push_back(j);
      }
    }
    const int32_t n = static_cast<int32_t>(values.size());
    count = count < n ? count : n;   // fewer only with NaN logits, which are never collected
    best.resize(count);
    if (n <= kSmallRanking) {
      ranks.resize(n);
      rank_small(values.data(), ids.data(), n, ranks.data());
      for (int32_t i = 0; i < n; ++i)
        if (ranks[i] < count) best[ranks[i]] = {values[i], ids[i]};
    } else {
      pairs.clear();
      for (int32_t i = 0; i < n; ++i) pairs.emplace_back(values[i], ids[i]);
      std::partial_sort(pairs.begin(), pairs.begin() + count, pairs.end(), Better());
      std::copy(pairs.begin(), pairs.begin() + count, best.begin());
    }
  }
};

// sum_j exp((row[j] - top) * inverse) over the first `columns` entries (exp(row[j]) itself when
// `natural`), in Vec lanes (the scalar loop's exp_of does not vectorize); with `out`, each term is
// stored there too.
inline float exp_terms(const float* row, int32_t columns, float top, float inverse, bool natural, float* out) {
  Vec sums = Vec{};
  const Vec shift = Vec{} + top, scale = Vec{} + inverse;
  int32_t j = 0;
  for (; j + kVecWidth <= columns; j += kVecWidth) {
    Vec x;
    std::memcpy(&x, row + j, sizeof x);
    const Vec term = exp_of(natural ? x : (x - shift) * scale);
    if (out != nullptr) std::memcpy(out + j, &term, sizeof term);
    sums += term;
  }
  float sum = 0.0f;
  for (int k = 0; k < kVecWidth; ++k) sum += sums[k];
  for (; j < columns; ++j) {
    const float term = exp_of(natural ? row[j] : (row[j] - top) * inverse);
    if (out != nullptr) out[j] = term;
    sum += term;
  }
  return sum;
}

struct Draw {
  const float* row;
  int32_t columns;
  float top, inverse, uniform, top_p;
  int32_t top_k;
  bool natural;   // exp(logit) itself (T = 1 with bounded logits)


  int32_t plain(std::vector<float>& weights, std::vector<float>& block_mass) const {
    const int32_t blocks = (columns + kBlock - 1) / kBlock;
    weights.assign(static_cast<size_t>(blocks) * kBlock, 0.0f);
    block_mass.assign(blocks, 0.0f);
    float* w = weights.data();
    exp_terms(row, columns, top, inverse, natural, w);
    static_assert(kBlock % kVecWidth == 0, "a block is whole vectors");
    for (int32_t b = 0; b < blocks; ++b) {   // in vector lanes: a chain of scalar additions is slower
      Vec lanes = Vec{};
      for (int k = 0; k < kBlock; k += kVecWidth) {
        Vec v;
        std::memcpy(&v, w + b * kBlock + k, sizeof v);
        lanes += v;
      }
      float mass = 0.0f;
      for (int k = 0; k < kVecWidth; ++k) mass += lanes[k];
      block_mass[b] = mass;
    }
    float total = 0.0f;
    for (int32_t b = 0; b < blocks; ++b) total += block_mass[b];
    const float threshold = uniform * total;
    int32_t block = 0, last_positive = 0;
    float before = 0.0f, cumulative = 0.0f;
    for (int32_t b = 0; b < blocks; ++b) {
      if (block_mass[b] > 0.0f) last_positive = b;
    }
    for (int32_t b = 0; b < blocks; ++b) {
      cumulative += block_mass[b];
      if (cumulative <= threshold) {
        block = b + 1;
        before = cumulative;
      }
    }
    if (block > last_positive) {   // rounding past the end: the last block with mass
      block = last_positive;
      before = 0.0f;
      for (int32_t b = 0; b < block; ++b) before += block_mass[b];
    }
    int32_t member = 0, member_positive = 0;
    float running = before;
    for (int k = 0; k < kBlock; ++k) {
      running += w[block * kBlock + k];
      if (running <= threshold) member = k + 1;
      if (w[block * kBlock + k] > 0.0f) member_positive = k;
    }
    return block * kBlock + (member < member_positive ? member : member_positive);
  }

  int32_t ranked(std::vector<std::pair<float, int32_t>>& candidates, std::vector<float>& weights,
                 Largest& largest) const {
    const bool nucleus = top_p < 1.0f;
    float mass = 1.0f;
    if (nucleus) {   // the whole vocabulary's mass at this temperature
      mass = exp_terms(row, columns, top, inverse, false, nullptr);
    }
    int32_t count = top_k > 0 ? top_k : kNucleusCandidates;
    count = count < columns ? count : columns;
    for (int attempt = 0; attempt < 2; ++attempt) {
      largest(row, columns, count, candidates);
      if (candidates.empty()) return 0;   // a row of NaN: nothing to draw from
      count = static_cast<int32_t>(candidates.size());
      weights.resize(count);
      float sum = 0.0f;
      for (int32_t r = 0; r < count; ++r) sum += weights[r] = exp_of((candidates[r].first - top) * inverse);
      const float limit = top_p * mass;
      // a nucleus whose kept ranks may continue past the candidates: rank the whole vocabulary
      if (nucleus && (top_k <= 0 || top_k > count) && sum < limit && count < columns) {
        count = columns;
        continue;
      }
      float preceding = 0.0f, cumulative = 0.0f;
      int32_t kept = 0;
      for (int32_t r = 0; r < count; ++r) {
        const bool keep = (top_k <= 0 || r < top_k) && (!nucleus || preceding < limit);
        preceding += weights[r];
        if (!keep) {
          weights[r] = 0.0f;
          continue;
        }
        ++kept;
        cumulative += weights[r];
      }
      const float threshold = uniform * cumulative;
      int32_t choice = 0;
      float running = 0.0f;
      for (int32_t r = 0; r < count; ++r) {
        running += weights[r];
        if (running <= threshold) choice = r + 1;
      }
      const int32_t last = kept > 0 ? kept - 1 : 0;
      return candidates[choice < last ? choice : last].second;
    }
    return candidates.front().second;   // not reached: the second attempt ranks everything
  }
};

class SampleOp : public OpKernel {
 public:
  explicit SampleOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("columns", &columns_));
    OP_REQUIRES_OK(context, context->GetAttr("bounded", &bounded_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& logits = context->input(0);
    OP_REQUIRES(context, logits.dims() == 2, absl::InvalidArgumentError("LstmqSample: logits must be a matrix"));
    const int64_t rows = logits.dim_size(0), width = logits.dim_size(1);
    OP_REQUIRES(context, columns_ > 0 && columns_ <= width,
                absl::InvalidArgumentError("LstmqSample: columns must be 1 .. the logits' width"));
    for (int input = 1; input < 7; ++input)
      OP_REQUIRES(context, context->input(input).dims() == 1 && context->input(input).dim_size(0) == rows,
                  absl::InvalidArgumentError("LstmqSample: every per-row input must be a vector of rows"));
    Tensor* choice;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({rows}), &choice));
    const float* data = logits.flat<float>().data();
    const float* top = context->input(1).flat<float>().data();
    const float* temperature = context->input(2).flat<float>().data();
    const int32_t* top_k = context->input(3).flat<int32_t>().data();
    const float* top_p = context->input(4).flat<float>().data();
    const float* uniform = context->input(5).flat<float>().data();
    const int32_t* greedy = context->input(6).flat<int32_t>().data();
    int32_t* out = choice->flat<int32_t>().data();
    const int32_t columns = columns_;
    const bool bounded = bounded_;
    auto work = [&](int64_t begin, int64_t end) {
      std::vector<std::pair<float, int32_t>> candidates;
      std::vector<float> weights, block_mass;
      Largest largest;
      for (int64_t i = begin; i < end; ++i) {
        if (!(temperature[i] > 0.0f)) {
          out[i] = greedy[i];
          continue;
        }
        const Draw draw{data + i * width, columns, top[i], 1.0f / temperature[i], uniform[i], top_p[i], top_k[i],
                        bounded && temperature[i] == 1.0f && top_k[i] <= 0 && top_p[i] >= 1.0f};
        out[i] = (top_k[i] <= 0 && top_p[i] >= 1.0f) ? draw.plain(weights, block_mass) : draw.ranked(candidates, weights, largest);
      }
    };
    auto* threads = context->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(threads->num_threads, threads->workers, rows, /*cost_per_unit=*/width * 30, work);
  }

 private:
  int32_t columns_;
  bool bounded_;
};

REGISTER_OP("LstmqSample")
    .Input("logits: float")
    .Input("top: float")
    .Input("temperature: float")
    .Input("top_k: int32")
    .Input("top_p: float")
    .Input("uniform: float")
    .Input("greedy: int32")
    .Output("choice: int32")
    .Attr("columns: int")
    .Attr("bounded: bool = false")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle logits;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &logits));
      c->set_output(0, c->Vector(c->Dim(logits, 0)));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("LstmqSample").Device(::tensorflow::DEVICE_CPU), SampleOp);

// The uniform in [0, 1) of a row's stream state and word position: SplitMix64's output for
// counter position + 1, its top 24 bits (shared/generate.py's _uniforms and row_uniforms).
inline float stream_uniform(uint64_t base, int32_t position) {
  uint64_t z = base + (static_cast<uint64_t>(static_cast<int64_t>(position)) + 1) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * 0x1p-24f;
}

void sample_rows(const SampleRows& sample, int64_t first_row, int64_t end_row, const float* logits, int64_t stride,
                 int32_t columns, const int32_t* best, const float* top) {
  std::vector<std::pair<float, int32_t>> candidates;
  std::vector<float> weights, block_mass;
  Largest largest;
  for (int64_t i = first_row; i < end_row; ++i) {
    const float temperature = sample.temperature[i];
    if (!(temperature > 0.0f)) {
      sample.choice[i] = best[i];
      sample.chosen[i] = top[i];
      continue;
    }
    const float* row = logits + (i - first_row) * stride;
    const int32_t top_k = sample.top_k[i];
    const float top_p = sample.top_p[i];
    const bool plain = top_k <= 0 && top_p >= 1.0f;
    const Draw draw{row, columns, top[i], 1.0f / temperature, stream_uniform(sample.base[i], sample.position[i]),
                    top_p, top_k, /*natural=*/plain && temperature == 1.0f};
    const int32_t choice = plain ? draw.plain(weights, block_mass) : draw.ranked(candidates, weights, largest);
    sample.choice[i] = choice;
    sample.chosen[i] = row[choice];
  }
}

REGISTER_OP("LstmqBestWord")
    .Input("logits: float")
    .Output("best: int32")
    .Output("top: float")
    .Output("near: bool")
    .Output("sumexp: float")
    .Attr("scored: bool = true")
    .Attr("tolerance: float = 1e-6")
    .Attr("bounded: bool = false")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle logits;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &logits));
      auto rows = c->Vector(c->Dim(logits, 0));
      for (int i = 0; i < 4; ++i) c->set_output(i, rows);
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("LstmqBestWord").Device(::tensorflow::DEVICE_CPU), BestWordOp);

}  // namespace
}  // namespace lstmq
