/* Writing a small file whole into a directory a batch makes (transfer/_new_dirs.py), in one call
 * with the GIL released: create it, write its content, set its mtime, close it.
 *
 * From Python that is four calls - os.open, os.write, os.utime, os.close - each giving up the
 * GIL and taking it back, while the agent's event loop (the link's TLS reads and decoding) wants
 * it: a first copy of 10,000 small files applies them all this way (transfer/staging.py
 * `IncomingFile.whole`). Nothing here decides anything: the caller has checked the path, the
 * content's hash, the mode (one the umask keeps whole, that the directory's ACL was seen not to
 * cut) and the durability (fast: nothing to fsync).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define CREATE_FLAGS (O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC)
#define NS_PER_S 1000000000LL

/* Creates `name` below `dir_fd` with `mode`, writes `len` bytes of `data`, sets its atime and
 * mtime to `mtime` and closes it. Returns 0, or an errno with nothing left behind: a file it made
 * is removed again (never one that was there: O_EXCL). `*late`: the failure came after the
 * content was written (setting the mtime, or the close), a step the commit takes otherwise. */
static int write_whole(int dir_fd, const char *name, mode_t mode, const char *data, size_t len,
                       const struct timespec *mtime, int *late) {
    int fd, err = 0;
    *late = 0;
    do {
        fd = openat(dir_fd, name, CREATE_FLAGS, mode);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return errno;
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            err = errno;
            break;
        }
        if (n == 0) { /* not for a regular file; never loop on it */
            err = EIO;
            break;
        }
        data += n;
        len -= (size_t)n;
    }
    if (!err) {
        struct timespec times[2] = {*mtime, *mtime};
        int done;
        do {
            done = futimens(fd, times);
        } while (done != 0 && errno == EINTR);
        if (done != 0) {
            err = errno;
            *late = 1;
        }
    }
    if (close(fd) != 0 && !err && errno != EINTR) { /* EINTR: closed all the same (Linux) */
        err = errno;
        *late = 1;
    }
    if (err) (void)unlinkat(dir_fd, name, 0);
    return err;
}

static PyObject *py_write_whole(PyObject *self, PyObject *args) {
    int dir_fd, err, late, mode;
    long long mtime_ns;
    PyObject *name, *name_obj;
    Py_buffer data;
    struct timespec mtime;

    if (!PyArg_ParseTuple(args, "iOiy*L:write_whole", &dir_fd, &name, &mode, &data, &mtime_ns))
        return NULL;
    if (mode < 0 || mode > 07777) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "mode %d is no permission bits", mode);
    }
    if (!PyUnicode_FSConverter(name, &name_obj)) {
        PyBuffer_Release(&data);
        return NULL;
    }
    /* as os.utime(ns=) splits it: seconds rounded down, nanoseconds 0..999999999 */
    mtime.tv_sec = (time_t)(mtime_ns / NS_PER_S);
    mtime.tv_nsec = (long)(mtime_ns % NS_PER_S);
    if (mtime.tv_nsec < 0) {
        mtime.tv_sec -= 1;
        mtime.tv_nsec += NS_PER_S;
    }
    const char *path = PyBytes_AS_STRING(name_obj);
    Py_BEGIN_ALLOW_THREADS
    err = write_whole(dir_fd, path, (mode_t)mode, (const char *)data.buf, (size_t)data.len, &mtime,
                      &late);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (err && late) {
        Py_DECREF(name_obj);
        return PyLong_FromLong(err);
    }
    if (err) {
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
        Py_DECREF(name_obj);
        return NULL;
    }
    Py_DECREF(name_obj);
    return PyLong_FromLong(0);
}

static PyMethodDef methods[] = {
    {"write_whole", py_write_whole, METH_VARARGS,
     "write_whole(dir_fd, name, mode, data, mtime_ns, /) -> int\n\n"
     "Create `name` below `dir_fd` (O_CREAT | O_EXCL | O_NOFOLLOW) with `mode`, write all of\n"
     "`data`, set its atime and mtime to `mtime_ns` and close it, with the GIL released.\n"
     "Returns 0, or the errno of setting the mtime or of the close (the commit's steps, the\n"
     "file removed again). Raises OSError if the create or a write fails (FileExistsError if\n"
     "the name is taken); a file it made is removed then."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_newfiles",
    .m_doc = "Writing a small file whole into a new directory in one call (transfer/staging.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__newfiles(void) { return PyModule_Create(&module); }
