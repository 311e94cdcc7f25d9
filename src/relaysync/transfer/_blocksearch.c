/* The hot path of the delta ("different patch"): signing a file's blocks and searching a new
 * version for them at every byte offset, writing librsync's delta format (so the target applies
 * it with librsync's rs_patch_file).
 *
 * Same algorithm as rsync and librsync: per block a 32-bit rolling weak sum (Rabin-Karp,
 * modulo 2^32) and a strong hash (XXH3-64); the search rolls the weak sum one byte at a time
 * through unmatched data and checks the strong hash only where the weak sum hits. Measured
 * against librsync 2.3 (BLAKE2 strong sums, about 300 MB/s on matched data), what makes this one
 * faster: XXH3 instead of BLAKE2; after a match the next block of the basis is tried first by
 * its strong hash alone (XXH3 runs at memory speed), so unchanged regions are never rolled; the
 * weak sum of a fresh window is a dot product with a table of powers, which the compiler
 * vectorises. A wrong match (a 64-bit strong collision) is caught by the whole-file hash the
 * target checks before it commits, and the file is then sent whole.
 *
 * Signature file: a 32-byte header (magic "RSYNSIG1", u32 block_len, u32 tail_len, u64 size,
 * u64 count), then count u32 weak sums, then count u64 strong hashes, native byte order (the
 * signature never leaves the machine that wrote it). The last block is tail_len bytes long.
 *
 * Both functions release the GIL and do their own I/O on the file descriptors they are given.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define XXH_INLINE_ALL
#include <xxhash.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RK_MULT 0x08104225u
#define SIG_MAGIC "RSYNSIG1"
#define READ_BYTES (4u << 20)      /* read the new version this much at a time */
#define OUT_BYTES (256u << 10)     /* the delta is written out in pieces of this size */
#define MAX_BLOCK_LEN (1u << 20)

#define RS_DELTA_MAGIC 0x72730236u
#define RS_OP_END 0x00
#define RS_OP_LITERAL_N1 0x41
#define RS_OP_COPY_N1_N1 0x45

typedef struct {
    char magic[8];
    uint32_t block_len;
    uint32_t tail_len;
    uint64_t size;
    uint64_t count;
} sig_header;

/* ---- I/O helpers: return 0 or an errno ---- */

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read up to n bytes at off; *got is what was read (short only at end of file). */
static int pread_full(int fd, uint8_t *p, size_t n, uint64_t off, size_t *got) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, p + done, n - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (r == 0) break;
        done += (size_t)r;
    }
    *got = done;
    return 0;
}

/* powers[i] = RK_MULT^(n-1-i): the weak sum of a window is the dot product with its bytes. */
static uint32_t *make_powers(uint32_t n) {
    uint32_t *pw = malloc((size_t)n * sizeof(uint32_t));
    if (!pw) return NULL;
    uint32_t x = 1;
    for (uint32_t i = n; i-- > 0;) {
        pw[i] = x;
        x *= RK_MULT;
    }
    return pw;
}

__attribute__((target_clones("avx2", "default")))
static uint32_t weak_sum(const uint8_t *d, uint32_t n, const uint32_t *pw) {
    uint32_t h = 0;
    for (uint32_t i = 0; i < n; i++) h += (uint32_t)d[i] * pw[i];
    return h;
}

/* ---- signing ---- */

/* Also hashes the whole file (XXH3-128, the scanner's content hash) in the same pass, so the
 * caller can check which version it signed without reading the file again. */
static int do_sign(int in_fd, int out_fd, uint32_t block_len, uint64_t *size_out,
                   XXH128_canonical_t *digest) {
    int err = 0;
    size_t cap = 1024, count = 0;
    uint64_t size = 0;
    uint32_t tail = 0;
    size_t buf_len = (READ_BYTES / block_len) * block_len;
    if (buf_len == 0) buf_len = block_len;
    uint8_t *buf = malloc(buf_len);
    uint32_t *weak = malloc(cap * sizeof(uint32_t));
    uint64_t *strong = malloc(cap * sizeof(uint64_t));
    uint32_t *pw = make_powers(block_len);
    XXH3_state_t whole;
    XXH3_128bits_reset(&whole);
    if (!buf || !weak || !strong || !pw) {
        err = ENOMEM;
        goto out;
    }
    for (;;) {
        size_t got = 0;
        if ((err = pread_full(in_fd, buf, buf_len, size, &got))) goto out;
        XXH3_128bits_update(&whole, buf, got);
        for (size_t at = 0; at < got; at += block_len) {
            uint32_t n = (uint32_t)((got - at) < block_len ? got - at : block_len);
            if (count == cap) {
                cap *= 2;
                uint32_t *w2 = realloc(weak, cap * sizeof(uint32_t));
                if (w2) weak = w2;
                uint64_t *s2 = realloc(strong, cap * sizeof(uint64_t));
                if (s2) strong = s2;
                if (!w2 || !s2) {
                    err = ENOMEM;
                    goto out;
                }
            }
            weak[count] = weak_sum(buf + at, n, pw + (block_len - n));
            strong[count] = XXH3_64bits(buf + at, n);
            count++;
            tail = n;
        }
        size += got;
        if (got < buf_len) break;
    }
    sig_header h;
    memcpy(h.magic, SIG_MAGIC, 8);
    h.block_len = block_len;
    h.tail_len = tail;
    h.size = size;
    h.count = count;
    if ((err = write_all(out_fd, (const uint8_t *)&h, sizeof h))) goto out;
    if ((err = write_all(out_fd, (const uint8_t *)weak, count * sizeof(uint32_t)))) goto out;
    if ((err = write_all(out_fd, (const uint8_t *)strong, count * sizeof(uint64_t)))) goto out;
    *size_out = size;
    XXH128_canonicalFromHash(digest, XXH3_128bits_digest(&whole));
out:
    free(buf);
    free(weak);
    free(strong);
    free(pw);
    return err;
}

/* ---- delta output in librsync's format ---- */

typedef struct {
    int fd;
    uint8_t *buf;
    size_t len;
    int err;
    uint64_t copy_pos, copy_len; /* a pending COPY, extended while the next match follows on */
    uint64_t literal_bytes, copied_bytes;
} emitter;

static void em_flush(emitter *e) {
    if (e->err || e->len == 0) return;
    e->err = write_all(e->fd, e->buf, e->len);
    e->len = 0;
}

static void em_bytes(emitter *e, const uint8_t *p, size_t n) {
    while (n && !e->err) {
        size_t room = OUT_BYTES - e->len;
        size_t k = n < room ? n : room;
        memcpy(e->buf + e->len, p, k);
        e->len += k;
        p += k;
        n -= k;
        if (e->len == OUT_BYTES) em_flush(e);
    }
}

static int int_len(uint64_t v) {
    if (v <= 0xffu) return 1;
    if (v <= 0xffffu) return 2;
    if (v <= 0xffffffffu) return 4;
    return 8;
}

static int len_index(int n) { return n == 1 ? 0 : n == 2 ? 1 : n == 4 ? 2 : 3; }

static void em_netint(emitter *e, uint64_t v, int n) {
    uint8_t b[8];
    for (int i = n - 1; i >= 0; i--) {
        b[i] = (uint8_t)v;
        v >>= 8;
    }
    em_bytes(e, b, (size_t)n);
}

static void em_pending_copy(emitter *e) {
    if (!e->copy_len) return;
    int pn = int_len(e->copy_pos), ln = int_len(e->copy_len);
    uint8_t cmd = (uint8_t)(RS_OP_COPY_N1_N1 + 4 * len_index(pn) + len_index(ln));
    em_bytes(e, &cmd, 1);
    em_netint(e, e->copy_pos, pn);
    em_netint(e, e->copy_len, ln);
    e->copied_bytes += e->copy_len;
    e->copy_len = 0;
}

static void em_copy(emitter *e, uint64_t pos, uint64_t len) {
    if (e->copy_len && e->copy_pos + e->copy_len == pos) {
        e->copy_len += len;
        return;
    }
    em_pending_copy(e);
    e->copy_pos = pos;
    e->copy_len = len;
}

static void em_literal(emitter *e, const uint8_t *p, size_t n) {
    if (!n) return;
    em_pending_copy(e);
    if (n <= 64) {
        uint8_t cmd = (uint8_t)n;
        em_bytes(e, &cmd, 1);
    } else {
        int ln = int_len(n);
        uint8_t cmd = (uint8_t)(RS_OP_LITERAL_N1 + len_index(ln));
        em_bytes(e, &cmd, 1);
        em_netint(e, n, ln);
    }
    em_bytes(e, p, n);
    e->literal_bytes += n;
}

/* ---- the search ---- */

typedef struct {
    uint32_t block_len, tail_len;
    uint64_t count, full; /* blocks, and blocks of exactly block_len */
    uint32_t *weak;   /* copied out of the signature: aligned */
    uint64_t *strong;
    uint32_t *table; /* open addressing on the weak sum: block index + 1, 0 = empty */
    uint32_t mask, shift;
    /* A bit per hash of the weak sum, with about BITS_PER_BLOCK bits per block: most unmatched
     * windows miss it, so the roll does not touch the larger table (measured: a third of
     * the time per byte on random data, against half-full table slots). */
    uint64_t *bits;
    uint32_t bits_shift;
} sumset;

#define BITS_PER_BLOCK 32
/* Bounds that keep the search linear whatever the data: a block is left out of the table (it
 * can then only be copied as a "next block") when its slot is more than MAX_PROBE away or
 * MAX_SAME_WEAK blocks already share its weak sum; the weak sum is linear, so a hostile file can
 * make thousands of distinct blocks with one weak sum, and unbounded chains made the search
 * quadratic (4 MiB: 67 s). */
#define MAX_PROBE 32
#define MAX_SAME_WEAK 8
#define MAX_COUNT (1ull << 26) /* blocks in a signature: 64 TiB at the largest block */

static inline uint32_t slot_of(const sumset *s, uint32_t weak) {
    return (weak * 0x9E3779B1u) >> s->shift;
}

static inline uint32_t bit_of(const sumset *s, uint32_t weak) {
    return (weak * 0x85EBCA77u) >> s->bits_shift;
}

static inline int maybe_present(const sumset *s, uint32_t weak) {
    uint32_t b = bit_of(s, weak);
    return (s->bits[b >> 6] >> (b & 63)) & 1;
}

static int build_table(sumset *s) {
    uint32_t bits = 10;
    while (((uint64_t)1 << bits) < 2 * s->full) bits++;
    s->mask = (1u << bits) - 1;
    s->shift = 32 - bits;
    s->table = calloc((size_t)s->mask + 1, sizeof(uint32_t));
    uint32_t fbits = 12;
    while (fbits < 26 && ((uint64_t)1 << fbits) < BITS_PER_BLOCK * s->full) fbits++;
    s->bits_shift = 32 - fbits;
    s->bits = calloc(((size_t)1 << fbits) / 64, sizeof(uint64_t));
    if (!s->table || !s->bits) return ENOMEM;
    for (uint64_t k = 0; k < s->full; k++) {
        uint32_t b = bit_of(s, s->weak[k]);
        s->bits[b >> 6] |= (uint64_t)1 << (b & 63);
        uint32_t i = slot_of(s, s->weak[k]);
        int skip = 0, probes = 0, same = 0;
        while (s->table[i]) {
            uint32_t other = s->table[i] - 1;
            if (s->weak[other] == s->weak[k]) {
                /* identical content: the first block serves every match */
                if (s->strong[other] == s->strong[k] || ++same >= MAX_SAME_WEAK) {
                    skip = 1;
                    break;
                }
            }
            if (++probes >= MAX_PROBE) {
                skip = 1;
                break;
            }
            i = (i + 1) & s->mask;
        }
        if (!skip) s->table[i] = (uint32_t)k + 1;
    }
    return 0;
}

/* The block whose weak sum is `weak` and strong hash that of window (computed lazily), or -1. */
static inline int64_t find_block(const sumset *s, uint32_t weak, const uint8_t *window,
                                 uint64_t *strong, int *have_strong) {
    uint32_t i = slot_of(s, weak);
    for (int probes = 0; probes < MAX_PROBE && s->table[i]; probes++) {
        uint32_t k = s->table[i] - 1;
        if (s->weak[k] == weak) {
            if (!*have_strong) {
                *strong = XXH3_64bits(window, s->block_len);
                *have_strong = 1;
            }
            if (s->strong[k] == *strong) return k;
        }
        i = (i + 1) & s->mask;
    }
    return -1;
}

/* Strong hashes that miss (a weak sum matched, the block did not) cost a block's hashing each.
 * Crafted content can make that happen at every byte offset (a base block whose weak sum equals
 * that of a run of zeros, then a new version of zeros): O(size x block). Past this many misses
 * per block of input (plus a floor), candidates found by weak sum alone are no longer checked;
 * the block after a match still is. The delta stays correct, only larger on such content. */
#define MISS_FLOOR 4096
#define MISSES_PER_BLOCK 8

static int do_delta(const sumset *s, int in_fd, uint64_t start, int64_t length, int out_fd,
                    uint64_t *lit_out, uint64_t *copy_out, uint64_t *miss_out) {
    const uint32_t B = s->block_len;
    int err = 0;
    size_t cap = READ_BYTES + 2 * (size_t)B;
    uint8_t *buf = malloc(cap);
    uint8_t *out = malloc(OUT_BYTES);
    uint32_t *pw = make_powers(B);
    emitter e = {.fd = out_fd, .buf = out};
    if (!buf || !out || !pw) {
        err = ENOMEM;
        goto done;
    }
    uint8_t magic[4] = {0x72, 0x73, 0x02, 0x36};
    em_bytes(&e, magic, 4);

    uint64_t file_off = start;  /* file offset of the next byte to read */
    uint64_t left = length < 0 ? UINT64_MAX : (uint64_t)length;
    size_t avail = 0, p = 0, lit = 0;
    int eof = 0;
    int have_weak = 0;
    uint32_t h = 0;
    const uint32_t top = pw[0]; /* RK_MULT^(B-1): the weight of the byte leaving the window */
    int64_t next = -1;          /* the block after the last match: tried first by strong hash */
    uint64_t misses = 0;        /* strong hashes of weak-sum candidates that did not match */
    int starved = 0;            /* rolled to the end of the buffer: read more before going on */

    for (;;) {
        if (e.err) break;
        if (avail - p < B || starved) {
            if (!eof) {
                starved = 0;
                /* slide: flush the literal run so far, keep the window's bytes, read more (the
                 * rolling sum stays valid: the window's bytes only move) */
                em_literal(&e, buf + lit, p - lit);
                memmove(buf, buf + p, avail - p);
                avail -= p;
                lit = p = 0;
                size_t want = cap - avail;
                if (want > left) want = (size_t)left;
                size_t got = 0;
                if (want && (err = pread_full(in_fd, buf + avail, want, file_off, &got))) goto done;
                avail += got;
                file_off += got;
                left -= got;
                if (got < want || left == 0) eof = 1;
                continue;
            }
            /* the end: the basis's last, shorter block can match only as the last bytes */
            if (s->count > s->full && avail - p >= s->tail_len) {
                size_t q = avail - s->tail_len;
                if (XXH3_64bits(buf + q, s->tail_len) == s->strong[s->count - 1]) {
                    em_literal(&e, buf + lit, q - lit);
                    em_copy(&e, (uint64_t)(s->count - 1) * B, s->tail_len);
                    lit = p = avail;
                }
            }
            break;
        }
        int64_t k = -1;
        uint64_t strong = 0;
        int have_strong = 0;
        if (next >= 0 && (uint64_t)next < s->full) {
            strong = XXH3_64bits(buf + p, B);
            have_strong = 1;
            if (strong == s->strong[next]) k = next;
        }
        next = -1;
        if (k < 0) {
            if (!have_weak) {
                h = weak_sum(buf + p, B, pw);
                have_weak = 1;
            }
            uint64_t consumed = (file_off - start) - (avail - p); /* input before this window */
            if (misses <= MISS_FLOOR + consumed / B * MISSES_PER_BLOCK) {
                int had_strong = have_strong;
                k = find_block(s, h, buf + p, &strong, &have_strong);
                if (k < 0 && have_strong && !had_strong) misses++;
            }
        }
        if (k >= 0) {
            em_literal(&e, buf + lit, p - lit);
            em_copy(&e, (uint64_t)k * B, B);
            p += B;
            lit = p;
            next = k + 1;
            have_weak = 0;
            continue;
        }
        /* roll through unmatched bytes until the weak sum hits a slot or the buffer runs out */
        const uint8_t *d = buf;
        int hit = 0;
        while (p + B < avail) {
            h = (h - d[p] * top) * RK_MULT + d[p + B];
            p++;
            if (maybe_present(s, h)) {
                hit = 1;
                break;
            }
        }
        if (!hit && eof) {
            p++; /* the last full window missed: only the tail block is left to try */
            have_weak = 0;
        } else if (!hit) {
            starved = 1;
        }
    }
    em_literal(&e, buf + lit, avail - lit);
    em_pending_copy(&e);
    uint8_t end_cmd = RS_OP_END;
    em_bytes(&e, &end_cmd, 1);
    em_flush(&e);
    err = err ? err : e.err;
    *lit_out = e.literal_bytes;
    *copy_out = e.copied_bytes;
    *miss_out = misses;
done:
    free(buf);
    free(out);
    free(pw);
    return err;
}

/* ---- Python bindings ---- */

static PyObject *py_sign(PyObject *self, PyObject *args) {
    int in_fd, out_fd;
    long long block_len;
    if (!PyArg_ParseTuple(args, "iiL", &in_fd, &out_fd, &block_len)) return NULL;
    if (block_len < 16 || block_len > MAX_BLOCK_LEN) {
        PyErr_Format(PyExc_ValueError, "block_len %lld is out of range (16..%u)", block_len,
                     MAX_BLOCK_LEN);
        return NULL;
    }
    uint64_t size = 0;
    XXH128_canonical_t digest;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = do_sign(in_fd, out_fd, (uint32_t)block_len, &size, &digest);
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("Ky#", (unsigned long long)size, (const char *)digest.digest,
                         (Py_ssize_t)sizeof digest.digest);
}

static PyObject *py_delta(PyObject *self, PyObject *args) {
    Py_buffer sig;
    int in_fd, out_fd;
    long long start, length;
    if (!PyArg_ParseTuple(args, "y*iLLi", &sig, &in_fd, &start, &length, &out_fd)) return NULL;
    PyObject *result = NULL;
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "start must not be negative");
        PyBuffer_Release(&sig);
        return NULL;
    }
    sig_header h;
    if ((size_t)sig.len < sizeof h) goto bad;
    memcpy(&h, sig.buf, sizeof h);
    if (memcmp(h.magic, SIG_MAGIC, 8) != 0 || h.block_len < 16 || h.block_len > MAX_BLOCK_LEN ||
        h.count > MAX_COUNT || h.tail_len > h.block_len || (h.count && h.tail_len == 0) ||
        (size_t)sig.len != sizeof h + h.count * (sizeof(uint32_t) + sizeof(uint64_t)))
        goto bad;
    sumset s = {.block_len = h.block_len, .tail_len = h.tail_len, .count = h.count};
    s.full = (h.count && h.tail_len < h.block_len) ? h.count - 1 : h.count;
    uint64_t lit = 0, copied = 0, misses = 0;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    s.weak = malloc(h.count * sizeof(uint32_t) + 1);
    s.strong = malloc(h.count * sizeof(uint64_t) + 1);
    if (!s.weak || !s.strong) {
        err = ENOMEM;
    } else {
        const uint8_t *arrays = (const uint8_t *)sig.buf + sizeof h;
        memcpy(s.weak, arrays, h.count * sizeof(uint32_t));
        memcpy(s.strong, arrays + h.count * sizeof(uint32_t), h.count * sizeof(uint64_t));
        err = build_table(&s);
    }
    if (!err) err = do_delta(&s, in_fd, (uint64_t)start, length, out_fd, &lit, &copied, &misses);
    free(s.table);
    free(s.bits);
    free(s.weak);
    free(s.strong);
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
    } else {
        result = Py_BuildValue("KKK", (unsigned long long)lit, (unsigned long long)copied,
                               (unsigned long long)misses);
    }
    PyBuffer_Release(&sig);
    return result;
bad:
    PyErr_SetString(PyExc_ValueError, "not a relaysync block signature (or truncated)");
    PyBuffer_Release(&sig);
    return NULL;
}

/* block_sums(data, block_len) -> (weak sums, strong hashes): the signature entries of data's
 * blocks (the last may be short), for a sender that signs what it reads as it sends it. */
static PyObject *py_block_sums(PyObject *self, PyObject *args) {
    Py_buffer data;
    long long block_len;
    if (!PyArg_ParseTuple(args, "y*L", &data, &block_len)) return NULL;
    if (block_len < 16 || block_len > MAX_BLOCK_LEN) {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "block_len %lld is out of range (16..%u)", block_len,
                     MAX_BLOCK_LEN);
        return NULL;
    }
    size_t B = (size_t)block_len, n = ((size_t)data.len + B - 1) / B;
    PyObject *weak = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * sizeof(uint32_t)));
    PyObject *strong = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * sizeof(uint64_t)));
    uint32_t *pw = make_powers((uint32_t)B);
    if (!weak || !strong || !pw) {
        Py_XDECREF(weak);
        Py_XDECREF(strong);
        free(pw);
        PyBuffer_Release(&data);
        return pw ? NULL : PyErr_NoMemory();
    }
    uint8_t *w = (uint8_t *)PyBytes_AS_STRING(weak), *st = (uint8_t *)PyBytes_AS_STRING(strong);
    const uint8_t *d = data.buf;
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0, at = 0; i < n; i++, at += B) {
        uint32_t len = (uint32_t)((size_t)data.len - at < B ? (size_t)data.len - at : B);
        uint32_t ws = weak_sum(d + at, len, pw + (B - len));
        uint64_t ss = XXH3_64bits(d + at, len);
        memcpy(w + i * sizeof ws, &ws, sizeof ws);
        memcpy(st + i * sizeof ss, &ss, sizeof ss);
    }
    Py_END_ALLOW_THREADS
    free(pw);
    PyBuffer_Release(&data);
    return Py_BuildValue("(NN)", weak, strong);
}

static PyMethodDef methods[] = {
    {"block_sums", py_block_sums, METH_VARARGS,
     "block_sums(data, block_len) -> (weak, strong): packed u32 weak sums and u64 strong hashes "
     "of data's blocks, as in a signature."},
    {"sign", py_sign, METH_VARARGS,
     "sign(in_fd, out_fd, block_len) -> (size, xxh3_128 digest): write the block signature of "
     "in_fd to out_fd."},
    {"delta", py_delta, METH_VARARGS,
     "delta(signature, in_fd, start, length, out_fd) -> (literal_bytes, copied_bytes): write the "
     "librsync-format delta from the signed basis to in_fd[start:start+length] (length -1: to "
     "its end)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_blocksearch", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__blocksearch(void) { return PyModule_Create(&module); }
