/* Whether a file is open for writing anywhere, told by a read lease: the kernel refuses one
 * (EAGAIN) while the file is open for writing (or mapped for writing) by any process.
 *
 * The whole probe - open, take the lease, fstat under it, drop it, close - runs in one call with
 * the GIL released. While the probe holds the lease, a writer's open(O_WRONLY) or truncate sleeps
 * in the kernel's lease break until the lease goes (and an O_NONBLOCK one fails with EAGAIN):
 * done from Python, the lease went only once `os.close` got the GIL back, which another thread
 * of the agent may hold for seconds (a long C call); here it goes microseconds after it was taken.
 *
 * The fstat is taken while the lease is held, so it describes the file as it was at an instant
 * no process had it open for writing: the caller compares it with what a scan saw.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
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

/* The verdict on the open file `fd`, which is closed (and its lease with it) on return; with
 * CLOSED, `*held` is its fstat taken while the lease was held. */
static int probe_fd(int fd, struct stat *held) {
    struct stat st;
    int verdict = UNKNOWN;
    /* SIGURG (ignored by default), not SIGIO (whose default ends the process), tells of a
     * break: set before the lease is taken. */
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && fcntl(fd, F_SETSIG, SIGURG) == 0) {
        if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0) {
            if (fstat(fd, held) == 0 && S_ISREG(held->st_mode)) verdict = CLOSED;
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
    struct stat held;
    memset(&held, 0, sizeof held);
    if (!PyArg_ParseTuple(args, "iyK:probe", &dir_fd, &path, &resolve)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    fd = probe_open(dir_fd, path, (uint64_t)resolve);
    if (fd < 0)
        err = errno;
    else
        verdict = probe_fd(fd, &held);
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        errno = err;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    }
    if (verdict != CLOSED) memset(&held, 0, sizeof held);
    return Py_BuildValue("(iKKLLlLl)", verdict, (unsigned long long)held.st_dev,
                         (unsigned long long)held.st_ino, (long long)held.st_size,
                         (long long)held.st_mtim.tv_sec, (long)held.st_mtim.tv_nsec,
                         (long long)held.st_ctim.tv_sec, (long)held.st_ctim.tv_nsec);
}

static PyMethodDef methods[] = {
    {"probe", probe, METH_VARARGS,
     "probe(dir_fd, path, resolve, /)\n"
     "    -> (verdict, dev, ino, size, mtime_s, mtime_ns_part, ctime_s, ctime_ns_part)\n\n"
     "Open `path` below `dir_fd` (openat2 with `resolve` if it is not 0, else openat of one\n"
     "name; O_NOFOLLOW, O_NONBLOCK), take a read lease on it, fstat it, drop the lease and\n"
     "close, with the GIL released throughout. verdict 0: closed (no process had it open for\n"
     "writing), and the rest is its fstat taken under the lease; 1: open for writing; 2: not a\n"
     "regular file, or no lease may be taken (not the owner and no CAP_LEASE, a file system\n"
     "without leases). With 1 or 2 the rest is 0. Raises OSError if the open fails."},
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
