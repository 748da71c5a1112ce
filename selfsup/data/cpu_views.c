/* Per-sample views on the CPU, one image at a time while it sits in the core's cache (see cpu_views.py).

   The same operations as augment.py's batched tensor path, with the same parameters (drawn there, passed in as
   one row of floats per sample), so the two give the same view up to float rounding. Each sample is resampled
   from uint8, jittered in its own order, greyed, blurred and solarized in its output buffer: only the
   operations it draws run, and the image is read from memory once. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One sample's parameters, in this order (augment.kernel_params writes them by cpu_views.COLUMNS). */
enum {
    TOP, LEFT, HEIGHT, WIDTH, FLIP, JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE, ORDER,
    GRAY = ORDER + 4, BLUR, SOLARIZE, NUM_PARAMS
};

int num_params(void) { return NUM_PARAMS; }

static const float GRAY_WEIGHTS[3] = {0.2989f, 0.587f, 0.114f}; /* ITU-R 601-2 luma, as augment.py */

static inline float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

/* roi_align's weights along one axis (aligned, ceil(length / size) samples per output pixel, bilinear), which
   separate: output pixel i is sum_t weight[t * size + i] * input[index[t * size + i]] (tap-major, so that the
   sums over i vectorize; `reverse` stores pixel i at size - 1 - i, a flip). Returns the taps in use. */
static int axis_taps(float start, float length, int size, int extent, int taps, int reverse, int *index,
                     float *weight) {
    const float origin = start - 0.5f;
    const float bin = length / (float)size;
    int grid = (int)ceilf(length / (float)size);
    if (grid < 1) grid = 1;
    int used = 1;
    memset(weight, 0, sizeof(float) * taps * size);
    for (int i = 0; i < size; i++) {
        const int slot = reverse ? size - 1 - i : i;
        int lowest = -1;
        for (int s = 0; s < grid; s++) {
            float y = origin + i * bin + (s + 0.5f) * bin / (float)grid;
            if (y < -1.0f || y > (float)extent) continue; /* roi_align: a sample outside adds nothing */
            if (y <= 0.0f) y = 0.0f;
            int low = (int)y, high;
            if (low >= extent - 1) {
                high = low = extent - 1;
                y = (float)low;
            } else {
                high = low + 1;
            }
            if (lowest < 0) lowest = low; /* samples go up the axis: the first one's low tap is the lowest */
            if (high - lowest >= taps) continue; /* cannot happen for a box inside the image */
            const float upper = y - (float)low;
            weight[(low - lowest) * size + slot] += (1.0f - upper) / (float)grid;
            weight[(high - lowest) * size + slot] += upper / (float)grid;
            if (high - lowest + 1 > used) used = high - lowest + 1;
        }
        const int first = lowest < 0 ? 0 : lowest;
        for (int t = 0; t < taps; t++) index[t * size + slot] = first + t < extent ? first + t : extent - 1;
    }
    return used;
}

/* Crop the box (top, left, h, w) of a uint8 image and resize it to size x size into x, flipped if asked:
   down the rows into one row of the box's columns, then along it. */
static void crop_resize(const uint8_t *image, int channels, int height, int width, const float *p, int size,
                        float *x, float *row) {
    const int taps_y = (int)ceilf((float)height / size) + 2, taps_x = (int)ceilf((float)width / size) + 2;
    int *index_y = malloc(sizeof(int) * size * taps_y), *index_x = malloc(sizeof(int) * size * taps_x);
    float *wy = malloc(sizeof(float) * size * taps_y), *wx = malloc(sizeof(float) * size * taps_x);
    const int used_y = axis_taps(p[TOP], p[HEIGHT], size, height, taps_y, 0, index_y, wy);
    const int used_x = axis_taps(p[LEFT], p[WIDTH], size, width, taps_x, p[FLIP] != 0.0f, index_x, wx);
    int lo = width, hi = 0;
    for (int i = 0; i < used_x * size; i++) {
        lo = index_x[i] < lo ? index_x[i] : lo;
        hi = index_x[i] + 1 > hi ? index_x[i] + 1 : hi;
    }
    for (int i = 0; i < used_x * size; i++) index_x[i] -= lo;
    for (int c = 0; c < channels; c++) {
        const uint8_t *plane = image + (long)c * height * width + lo;
        for (int i = 0; i < size; i++) {
            for (int col = 0; col < hi - lo; col++) row[col] = 0.0f;
            for (int t = 0; t < used_y; t++) {
                const float w = wy[t * size + i] / 255.0f;
                const uint8_t *in = plane + (long)index_y[t * size + i] * width;
                for (int col = 0; col < hi - lo; col++) row[col] += w * (float)in[col];
            }
            float *restrict out = x + ((long)c * size + i) * size;
            for (int j = 0; j < size; j++) out[j] = 0.0f;
            for (int t = 0; t < used_x; t++) {
                const int *restrict at = index_x + t * size;
                const float *restrict w = wx + t * size;
                for (int j = 0; j < size; j++) out[j] += w[j] * row[at[j]];
            }
        }
    }
    free(index_y);
    free(index_x);
    free(wy);
    free(wx);
}

/* The three channel planes of an RGB image (restrict: they never overlap, which lets the loops vectorize). */
typedef struct {
    float *restrict r, *restrict g, *restrict b;
} Planes;

static inline Planes planes(float *x, long n) { return (Planes){x, x + n, x + 2 * n}; }

static inline float luma(float r, float g, float b) {
    return GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b;
}

/* Mean luma (the plane's mean for one channel), summed in double over eight lanes so that it vectorizes. */
static float mean_gray(float *x, int channels, long n) {
    double lanes[8] = {0}, sum = 0.0;
    const Planes p = planes(x, n);
    long i = 0;
    if (channels == 3) {
        for (; i + 8 <= n; i += 8)
            for (int l = 0; l < 8; l++) lanes[l] += luma(p.r[i + l], p.g[i + l], p.b[i + l]);
        for (; i < n; i++) sum += luma(p.r[i], p.g[i], p.b[i]);
    } else {
        for (; i + 8 <= n; i += 8)
            for (int l = 0; l < 8; l++) lanes[l] += x[i + l];
        for (; i < n; i++) sum += x[i];
    }
    for (int l = 0; l < 8; l++) sum += lanes[l];
    return (float)(sum / (double)n);
}

/* clamp(keep x + towards_gray gray(x) + towards_mean mean(gray(x))): brightness, contrast or saturation. */
static void blend(float *x, int channels, long n, float keep, float towards_gray, float towards_mean) {
    const float base = towards_mean != 0.0f ? towards_mean * mean_gray(x, channels, n) : 0.0f;
    if (channels == 3 && towards_gray != 0.0f) {
        const Planes p = planes(x, n);
        for (long i = 0; i < n; i++) {
            const float part = base + towards_gray * luma(p.r[i], p.g[i], p.b[i]);
            p.r[i] = clamp01(keep * p.r[i] + part);
            p.g[i] = clamp01(keep * p.g[i] + part);
            p.b[i] = clamp01(keep * p.b[i] + part);
        }
        return;
    }
    for (long i = 0; i < channels * n; i++) x[i] = clamp01(keep * x[i] + base);
}

static inline float hue_channel(float h, float offset, float maxc, float chroma) {
    const float a = h + offset;
    const float k = a - 6.0f * floorf(a / 6.0f); /* torch.remainder */
    const float ramp = 2.0f - fabsf(k - 2.0f);
    return maxc - (ramp < 0.0f ? 0.0f : (ramp > 1.0f ? 1.0f : ramp)) * chroma;
}

/* augment.hue_shift: V - C clamp(2 - |k - 2|, 0, 1), k = (offset + hue sextant) mod 6, per channel. */
static void hue_shift(float *x, long n, float shift) {
    const float turn = 6.0f * shift;
    const Planes p = planes(x, n);
    for (long i = 0; i < n; i++) {
        const float r = p.r[i], g = p.g[i], b = p.b[i];
        const float maxc = r > g ? (r > b ? r : b) : (g > b ? g : b);
        const float minc = r < g ? (r < b ? r : b) : (g < b ? g : b);
        const float chroma = maxc - minc;
        const float inverse = 1.0f / (chroma > 0.0f ? chroma : 1.0f);
        const float numerator = maxc == r ? g - b : (maxc == g ? (b - r) + 2.0f * chroma : (r - g) + 4.0f * chroma);
        const float h = numerator * inverse + turn;
        p.r[i] = hue_channel(h, 5.0f, maxc, chroma);
        p.g[i] = hue_channel(h, 3.0f, maxc, chroma);
        p.b[i] = hue_channel(h, 1.0f, maxc, chroma);
    }
}

/* ColorJitter's four operations in the sample's order; `ops` has bit o set when operation o runs. */
static void jitter(float *x, int channels, long n, const float *p, int ops) {
    for (int position = 0; position < 4; position++) {
        const int op = (int)p[ORDER + position];
        if (!(ops >> op & 1)) continue;
        const float f = p[BRIGHTNESS + op];
        if (op == 0) blend(x, channels, n, f, 0.0f, 0.0f);
        else if (op == 1) blend(x, channels, n, f, 0.0f, 1.0f - f);
        else if (op == 2) blend(x, channels, n, f, 1.0f - f, 0.0f);
        else hue_shift(x, n, f);
    }
}

static void grayscale(float *x, long n) {
    const Planes p = planes(x, n);
    for (long i = 0; i < n; i++) p.r[i] = p.g[i] = p.b[i] = luma(p.r[i], p.g[i], p.b[i]);
}

static inline int reflect(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

/* Separable blur of each channel with the sample's kernel (k taps), reflect-padded, as augment.blur_with. */
static void blur(float *x, int channels, int size, const float *kernel, int k, float *scratch) {
    const int r = k / 2;
    float *padded = scratch, *rows = scratch + size + 2 * r; /* one padded row; the plane blurred along rows */
    for (int c = 0; c < channels; c++) {
        float *plane = x + (long)c * size * size;
        for (int i = 0; i < size; i++) {
            const float *in = plane + (long)i * size;
            for (int j = -r; j < size + r; j++) padded[j + r] = in[reflect(j, size)];
            float *out = rows + (long)i * size;
            for (int j = 0; j < size; j++) out[j] = 0.0f;
            for (int t = 0; t < k; t++)
                for (int j = 0; j < size; j++) out[j] += kernel[t] * padded[j + t];
        }
        for (int i = 0; i < size; i++) {
            float *out = plane + (long)i * size;
            for (int j = 0; j < size; j++) out[j] = 0.0f;
            for (int t = 0; t < k; t++) {
                const float *in = rows + (long)reflect(i - r + t, size) * size;
                for (int j = 0; j < size; j++) out[j] += kernel[t] * in[j];
            }
        }
    }
}

/* One call's arguments (see make_views). */
typedef struct {
    const uint8_t *images;
    int channels, height, width;
    const float *params;
    int crop, size, ops;
    const float *kernels;
    int k;
    float *out;
    uint8_t *out_uint8;
} Job;

/* The views of samples [begin, end); 0, or -1 when memory runs out. */
static int views_of(const Job *job, long begin, long end) {
    const int channels = job->channels, size = job->size, k = job->k;
    const long n = (long)size * size, values = channels * n;
    const long scratch_values = (long)size * size + size + 2L * (k / 2) + job->width;
    float *scratch = malloc(sizeof(float) * scratch_values);
    float *own = job->out == NULL ? malloc(sizeof(float) * values) : NULL;
    if (scratch == NULL || (job->out == NULL && own == NULL)) {
        free(scratch);
        free(own);
        return -1;
    }
    for (long b = begin; b < end; b++) {
        const float *p = job->params + b * NUM_PARAMS;
        const uint8_t *image = job->images + b * channels * (long)job->height * job->width;
        float *x = job->out != NULL ? job->out + b * values : own;
        if (job->crop) {
            crop_resize(image, channels, job->height, job->width, p, size, x, scratch);
        } else {
            for (long i = 0; i < values; i++) x[i] = (float)image[i] / 255.0f;
        }
        if (p[JITTER] != 0.0f) jitter(x, channels, n, p, job->ops);
        if (p[GRAY] != 0.0f && channels == 3) grayscale(x, n);
        if (p[BLUR] != 0.0f) blur(x, channels, size, job->kernels + b * k, k, scratch);
        if (p[SOLARIZE] != 0.0f)
            for (long i = 0; i < values; i++) x[i] = x[i] >= 0.5f ? 1.0f - x[i] : x[i];
        if (job->out == NULL) {
            uint8_t *u = job->out_uint8 + b * values;
            for (long i = 0; i < values; i++) {
                const float v = nearbyintf(x[i] * 255.0f);
                u[i] = (uint8_t)(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v));
            }
        }
    }
    free(scratch);
    free(own);
    return 0;
}

/* The views of `count` samples on up to `threads` threads, in OpenMP's pool: torch's own when it runs on
   libgomp (the same library, loaded once), so the kernel never competes with torch's spinning threads; and one
   thread runs no parallel region at all (a forked data worker must not). images uint8 (B, C, H, W); params
   (B, NUM_PARAMS); kernels (B, k) when k > 0. crop = 0: the images are already size x size (cropped by the
   workers). Writes float (out) or, when out is NULL, uint8 rounded half to even as augment.to_uint8
   (out_uint8). Returns 0, or -1 when memory runs out. */
int make_views(const uint8_t *images, int channels, int height, int width, const float *params, int crop,
               int size, int ops, const float *kernels, int k, float *out, uint8_t *out_uint8, long count,
               int threads) {
    const Job job = {images, channels, height, width, params, crop, size, ops, kernels, k, out, out_uint8};
    if (threads <= 1 || count <= 1) return views_of(&job, 0, count);
    const long chunks = count < 4L * threads ? count : 4L * threads; /* a few a thread, for balance */
    int code = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(| : code)
    for (long chunk = 0; chunk < chunks; chunk++)
        code |= views_of(&job, count * chunk / chunks, count * (chunk + 1) / chunks);
    return code;
}
