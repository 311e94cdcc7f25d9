/* Whether a file is open for writing anywhere, told by a read lease: the kernel refuses one
 * (EAGAIN) while the file is open for writing (or mapped for writing) by any process.
 *
 * The whole probe - open, take the lease, drop it, close - runs in one call with the GIL
 * released. While the probe holds the lease, a writer's open(O_WRONLY) or truncate sleeps in
 * the kernel's lease break until the lease goes (and an O_NONBLOCK one fails with EAGAIN): done
 * from Python, the lease went only once `os.close` got the GIL back, which another thread of the
 * agent may hold for seconds (a long C call); here it goes microseconds after it was taken.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437 /* the unified syscall table's number (Linux 5.6) */
#endif
#ifndef O_LARGEFILE
#define O_LARGEFILE 0
#endif

/* O_NONBLOCK: a FIFO does not wait for a writer, and a lease someone else holds (Samba's
 * oplocks) refuses the open at once instead of waiting for its break. */
#define PROBE_FLAGS (O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_LARGEFILE)

enum { CLOSED = 0, OPEN_FOR_WRITING = 1, UNKNOWN = 2 };

struct probe_how { /* struct open_how of openat2(2), not in every libc's headers */
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

/* Opens `path` below `dir_fd`: openat2 with `resolve` if it is not 0, else openat (then `path`
 * is one name). Returns the fd, or -1 with errno set. */
static int probe_open(int dir_fd, const char *path, uint64_t resolve) {
    if (resolve) {
        struct probe_how how = {PROBE_FLAGS, 0, resolve};
        return (int)syscall(SYS_openat2, dir_fd, path, &how, sizeof how);
    }
    return openat(dir_fd, path, PROBE_FLAGS);
}

/* The verdict on the open file `fd`, which is closed (and its lease with it) on return. */
static int probe_fd(int fd) {
    struct stat st;
    int verdict = UNKNOWN;
    /* SIGURG (ignored by default), not SIGIO (whose default ends the process), tells of a
     * break: set before the lease is taken. */
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && fcntl(fd, F_SETSIG, SIGURG) == 0) {
        if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0) {
            verdict = CLOSED;
            (void)fcntl(fd, F_SETLEASE, F_UNLCK);
        } else if (errno == EAGAIN) {
            verdict = OPEN_FOR_WRITING;
        }
    }
    close(fd);
    return verdict;
}

static PyObject *probe(PyObject *self, PyObject *args) {
    int dir_fd, fd, err = 0, verdict = UNKNOWN;
    const char *path;
    unsigned long long resolve;
    if (!PyArg_ParseTuple(args, "iyK:probe", &dir_fd, &path, &resolve)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    fd = probe_open(dir_fd, path, (uint64_t)resolve);
    if (fd < 0)
        err = errno;
    else
        verdict = probe_fd(fd);
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        errno = err;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    }
    return PyLong_FromLong(verdict);
}

static PyMethodDef methods[] = {
    {"probe", probe, METH_VARARGS,
     "probe(dir_fd, path, resolve, /) -> 0 closed, 1 open for writing, 2 cannot be told\n\n"
     "Open `path` below `dir_fd` (openat2 with `resolve` if it is not 0, else openat of one\n"
     "name; O_NOFOLLOW, O_NONBLOCK), take a read lease on it, drop it and close, with the GIL\n"
     "released throughout. 2: not a regular file, or no lease may be taken (not the owner and\n"
     "no CAP_LEASE, a file system without leases). Raises OSError if the open fails."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_leaseprobe",
    .m_doc = "The read-lease probe of open_for_writing.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__leaseprobe(void) { return PyModule_Create(&module); }
