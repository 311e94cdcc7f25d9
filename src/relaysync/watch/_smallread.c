/* Reading a small file whole, and hashing it, for the scan (watch/_file_hash.py), in one call
 * with the GIL released.
 *
 * From Python the same work is five calls - open, fstat, readv, fstat, close - each giving up
 * the GIL and taking it back, and two stat results built: 15 us a file of 4 KiB against 6 us
 * for the system calls alone, and every hand-over of the GIL lets the agent's event loop (the
 * links' sending) in between, whose turn the scan then waits out. A first copy of 10,000 small
 * files reads them all in the scan.
 *
 * The file is opened as open_for_read does (relaysync/_util/fs.py): not followed, not waiting
 * for a FIFO's writer, and if a lease refuses the non-blocking open (EAGAIN), opened again
 * blocking, which waits for the lease's break. A file that is not a regular one once open is
 * not read at all (a device swapped in is never read).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#ifndef O_LARGEFILE
#define O_LARGEFILE 0
#endif

#define READ_FLAGS (O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_LARGEFILE)
#define MAX_SIZE (16 * 1024 * 1024) /* a caller's bound: larger files are read in blocks */

/* st_mtime_ns or st_ctime_ns as Python has it, or 0 with *ok cleared if it does not fit in 64
 * bits (a date past 2262: the caller reads such a file its usual way). */
static long long ns_of(const struct timespec *t, int *ok) {
    long long ns;
    if (__builtin_mul_overflow((long long)t->tv_sec, 1000000000LL, &ns) ||
        __builtin_add_overflow(ns, (long long)t->tv_nsec, &ns)) {
        *ok = 0;
        return 0;
    }
    return ns;
}

/* One file's read, done without the GIL. */
struct small_read {
    int err;       /* errno of a failed open, fstat or read; 0 if none */
    int whole;     /* the read returned exactly the size asked: digest and buffer hold it */
    int unchanged; /* a second fstat after the read found the first's size, mtime and ctime */
    struct stat opened;
    XXH128_canonical_t digest;
};

static void read_one(int dir_fd, const char *name, char *buf, Py_ssize_t size,
                     struct small_read *r) {
    struct stat after;
    Py_ssize_t got;
    int fd;
    memset(r, 0, sizeof *r);
    fd = openat(dir_fd, name, READ_FLAGS);
    if (fd < 0 && errno == EAGAIN) fd = openat(dir_fd, name, READ_FLAGS & ~O_NONBLOCK);
    if (fd < 0) {
        r->err = errno;
        return;
    }
    if (fstat(fd, &r->opened) != 0) {
        r->err = errno;
    } else if (S_ISREG(r->opened.st_mode)) {
        do {
            got = read(fd, buf, (size_t)size + 1);
        } while (got < 0 && errno == EINTR);
        if (got < 0) {
            r->err = errno;
        } else if (got == size) {
            r->whole = 1;
            XXH128_canonicalFromHash(&r->digest, XXH3_128bits(buf, (size_t)size));
            r->unchanged = fstat(fd, &after) == 0 && after.st_size == r->opened.st_size &&
                           after.st_mtim.tv_sec == r->opened.st_mtim.tv_sec &&
                           after.st_mtim.tv_nsec == r->opened.st_mtim.tv_nsec &&
                           after.st_ctim.tv_sec == r->opened.st_ctim.tv_sec &&
                           after.st_ctim.tv_nsec == r->opened.st_ctim.tv_nsec;
        }
    }
    close(fd); /* read only: nothing a failed close could lose */
}

/* The Python result of a read that did not fail; takes over `data` (the buffer, of size + 1
 * bytes), which it cuts to `size` or drops. NULL with an exception set on failure. */
static PyObject *result_of(struct small_read *r, PyObject *data, Py_ssize_t size) {
    PyObject *digest, *result;
    int times_ok = 1;
    long long mtime_ns = ns_of(&r->opened.st_mtim, &times_ok);
    long long ctime_ns = ns_of(&r->opened.st_ctim, &times_ok);
    if (!r->whole || !times_ok) {
        Py_DECREF(data);
        data = Py_NewRef(Py_None);
        digest = Py_NewRef(Py_None);
    } else {
        if (_PyBytes_Resize(&data, size) != 0) return NULL; /* data is freed on failure */
        digest = PyBytes_FromStringAndSize((const char *)r->digest.digest, sizeof r->digest.digest);
        if (digest == NULL) {
            Py_DECREF(data);
            return NULL;
        }
    }
    result = Py_BuildValue("(NNKKILLLO)", digest, data, (unsigned long long)r->opened.st_dev,
                           (unsigned long long)r->opened.st_ino, (unsigned int)r->opened.st_mode,
                           (long long)r->opened.st_size, mtime_ns, ctime_ns,
                           r->unchanged ? Py_True : Py_False);
    return result; /* "N": digest and data are the tuple's now, or freed if it failed */
}

static PyObject *read_small(PyObject *self, PyObject *args) {
    int dir_fd;
    PyObject *name, *name_obj, *data, *result = NULL;
    Py_ssize_t size;
    struct small_read r;

    if (!PyArg_ParseTuple(args, "iOn:read_small", &dir_fd, &name, &size)) return NULL;
    if (size < 0 || size > MAX_SIZE)
        return PyErr_Format(PyExc_ValueError, "size %zd outside 0..%d", size, MAX_SIZE);
    if (!PyUnicode_FSConverter(name, &name_obj)) return NULL;
    /* one byte more than the size stat'ed: a read that fills it tells of a file that grew */
    data = PyBytes_FromStringAndSize(NULL, size + 1);
    if (data == NULL) {
        Py_DECREF(name_obj);
        return NULL;
    }
    /* An open waiting for a lease's break that a signal interrupts is made again once the
     * signal's handlers ran (as os.open does, PEP 475), unless one of them raised. */
    do {
        Py_BEGIN_ALLOW_THREADS
        read_one(dir_fd, PyBytes_AS_STRING(name_obj), PyBytes_AS_STRING(data), size, &r);
        Py_END_ALLOW_THREADS
    } while (r.err == EINTR && PyErr_CheckSignals() == 0);
    if (PyErr_Occurred()) {
        Py_DECREF(data);
    } else if (r.err) {
        Py_DECREF(data);
        errno = r.err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
    } else {
        result = result_of(&r, data, size);
    }
    Py_DECREF(name_obj);
    return result;
}

static PyObject *read_many(PyObject *self, PyObject *args) {
    int dir_fd;
    PyObject *names, *sizes, *result = NULL;
    PyObject **encoded = NULL, **datas = NULL;
    Py_ssize_t *each = NULL, n, i, total = 0;
    struct small_read *reads = NULL;

    if (!PyArg_ParseTuple(args, "iO!O!:read_many", &dir_fd, &PyList_Type, &names, &PyList_Type,
                          &sizes))
        return NULL;
    /* snapshots: a name's __fspath__ may change the lists while they are read */
    names = PyList_AsTuple(names);
    if (names == NULL) return NULL;
    sizes = PyList_AsTuple(sizes);
    if (sizes == NULL) {
        Py_DECREF(names);
        return NULL;
    }
    n = PyTuple_GET_SIZE(names);
    if (PyTuple_GET_SIZE(sizes) != n) {
        PyErr_Format(PyExc_ValueError, "names and sizes differ");
        goto done;
    }
    encoded = PyMem_Calloc((size_t)n + 1, sizeof *encoded);
    datas = PyMem_Calloc((size_t)n + 1, sizeof *datas);
    each = PyMem_Calloc((size_t)n + 1, sizeof *each);
    reads = PyMem_Calloc((size_t)n + 1, sizeof *reads);
    if (!encoded || !datas || !each || !reads) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        each[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(sizes, i));
        if (each[i] == -1 && PyErr_Occurred()) goto done;
        if (each[i] < 0 || each[i] > MAX_SIZE || (total += each[i] + 1) > MAX_SIZE) {
            PyErr_Format(PyExc_ValueError, "sizes outside 0..%d in all", MAX_SIZE);
            goto done;
        }
        if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(names, i), &encoded[i])) goto done;
        datas[i] = PyBytes_FromStringAndSize(NULL, each[i] + 1);
        if (datas[i] == NULL) goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < n; i++)
        read_one(dir_fd, PyBytes_AS_STRING(encoded[i]), PyBytes_AS_STRING(datas[i]), each[i],
                 &reads[i]);
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    if (result == NULL) goto done;
    for (i = 0; i < n; i++) {
        PyObject *item;
        /* the caller reads it again its usual way, which tells why (or opens it again after an
         * interrupted wait for a lease's break) */
        if (reads[i].err) {
            item = Py_NewRef(Py_None);
            Py_CLEAR(datas[i]);
        } else {
            item = result_of(&reads[i], datas[i], each[i]);
            datas[i] = NULL; /* taken over */
            if (item == NULL) {
                Py_CLEAR(result);
                goto done;
            }
        }
        PyList_SET_ITEM(result, i, item);
    }
done:
    for (i = 0; encoded && i < n; i++) {
        Py_XDECREF(encoded[i]);
        if (datas) Py_XDECREF(datas[i]);
    }
    PyMem_Free(encoded);
    PyMem_Free(datas);
    PyMem_Free(each);
    PyMem_Free(reads);
    Py_DECREF(names);
    Py_DECREF(sizes);
    return result;
}

static PyMethodDef methods[] = {
    {"read_small", read_small, METH_VARARGS,
     "read_small(dir_fd, name, size, /)\n"
     "    -> (digest, data, dev, ino, mode, size, mtime_ns, ctime_ns, unchanged)\n\n"
     "Open `name` below `dir_fd` (not followed, not waited on unless a lease refuses the\n"
     "non-blocking open), fstat it and, if it is a regular file, read `size` + 1 bytes in one\n"
     "read; close it. All with the GIL released. If the read returned exactly `size` bytes,\n"
     "`data` is the content and `digest` its XXH3-128 (canonical, 16 bytes), and `unchanged`\n"
     "tells whether a second fstat after the read found the size, mtime and ctime of the\n"
     "first. Otherwise (not a regular file: see `mode`; another size now; a date past 2262)\n"
     "both are None and the caller reads the file its usual way. The other fields are the\n"
     "first fstat's. Raises OSError if the open, the fstat or the read fails."},
    {"read_many", read_many, METH_VARARGS,
     "read_many(dir_fd, names, sizes, /) -> list\n\n"
     "read_small of each name below `dir_fd` at its size (lists of equal length; sizes plus\n"
     "one byte each at most 16 MiB in all), all in one call with the GIL released: one result\n"
     "per name, as read_small's, or None where read_small would raise OSError."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_smallread",
    .m_doc = "Reading and hashing a small file whole in one call (watch/_file_hash.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__smallread(void) { return PyModule_Create(&module); }
