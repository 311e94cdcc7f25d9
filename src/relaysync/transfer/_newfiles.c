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
 * is removed again (never one that was there: O_EXCL). */
static int write_whole(int dir_fd, const char *name, mode_t mode, const char *data, size_t len,
                       const struct timespec *mtime) {
    int fd = openat(dir_fd, name, CREATE_FLAGS, mode), err = 0;
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
        if (futimens(fd, times) != 0) err = errno;
    }
    if (close(fd) != 0 && !err && errno != EINTR) err = errno;
    if (err) (void)unlinkat(dir_fd, name, 0);
    return err;
}

static PyObject *py_write_whole(PyObject *self, PyObject *args) {
    int dir_fd, err;
    unsigned int mode;
    long long mtime_ns;
    PyObject *name, *name_obj;
    Py_buffer data;
    struct timespec mtime;

    if (!PyArg_ParseTuple(args, "iOIy*L:write_whole", &dir_fd, &name, &mode, &data, &mtime_ns))
        return NULL;
    if (mode > 07777) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "mode %o is no permission bits", mode);
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
    err = write_whole(dir_fd, path, (mode_t)mode, (const char *)data.buf, (size_t)data.len, &mtime);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (err) {
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
        Py_DECREF(name_obj);
        return NULL;
    }
    Py_DECREF(name_obj);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"write_whole", py_write_whole, METH_VARARGS,
     "write_whole(dir_fd, name, mode, data, mtime_ns, /)\n\n"
     "Create `name` below `dir_fd` (O_CREAT | O_EXCL | O_NOFOLLOW) with `mode`, write all of\n"
     "`data`, set its atime and mtime to `mtime_ns` and close it, with the GIL released.\n"
     "Raises OSError (FileExistsError if the name is taken); a file it made is removed then."},
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
