/*
 * lcow._tarscan: the common case of tar header parsing, in C.
 *
 * scan_entry(buf, start, end, max_meta) parses one member -- its PAX ('x', 'g') and GNU
 * long-name ('L', 'K') records and then its own ustar/GNU header -- from buf[start:end] and
 * returns it as a tuple. Anything out of the ordinary (a bad checksum, a field that is not
 * plain octal, base-256 numbers, sparse files, malformed or unusual PAX records, times past
 * year 2255) returns SLOW instead, and the caller parses the member with the pure-Python
 * reader, which holds every rule and every error message. So this module may decline
 * anything, but whatever it accepts it must read exactly as the Python reader does
 * (lcow/convert/tarstream.py); tests compare the two on generated and hostile archives.
 *
 * Return values:
 *   tuple  (name, type, mode, uid, gid, size, mtime_ns, atime_ns | None, ctime_ns | None,
 *           linkname, devmajor, devminor, xattrs | None, header_pos, next_pos)
 *   -1     END: buf[start:start+512] is the all-zero end-of-archive block
 *    0     SLOW: let the Python reader parse this member
 *   n > 0  NEED: retry once n bytes from start are buffered
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 512
#define SLOW 0
#define END (-1)
#define NS 1000000000LL
/* ext4 keeps seconds from -2^31; seconds past this would overflow int64 ns: left to Python. */
#define MIN_SEC (-(1LL << 31))
#define FAST_MAX_SEC 9000000000LL
#define MAX_PAX_DIGITS 18

/* ustar header field offsets and widths */
enum {
    F_NAME = 0, W_NAME = 100,
    F_MODE = 100, F_UID = 108, F_GID = 116, W_ID = 8,
    F_SIZE = 124, F_MTIME = 136, W_NUM12 = 12,
    F_CHKSUM = 148, W_CHKSUM = 8,
    F_TYPE = 156,
    F_LINK = 157, W_LINK = 100,
    F_MAGIC = 257,
    F_DEVMAJOR = 329, F_DEVMINOR = 337,
    F_PREFIX = 345, W_PREFIX = 155,
};

/* What a member's PAX records set (last record wins, as in a dict). */
typedef struct {
    int any;                 /* at least one 'x' header */
    int has_uid, has_gid, has_mtime;
    PyObject *path, *linkpath, *xattrs;  /* owned references or NULL */
    int has_size, has_atime, has_ctime, has_devmajor, has_devminor;
    long long size, uid, gid, mtime, atime, ctime, devmajor, devminor;
} Pax;

static void pax_clear(Pax *pax) {
    Py_CLEAR(pax->path);
    Py_CLEAR(pax->linkpath);
    Py_CLEAR(pax->xattrs);
}

/* Length of a NUL-terminated string in a fixed-width field. */
static Py_ssize_t field_len(const unsigned char *p, Py_ssize_t width) {
    const unsigned char *nul = memchr(p, 0, (size_t)width);
    return nul ? nul - p : width;
}

/*
 * A numeric header field as the Python reader reads plain octal: leading spaces, octal
 * digits, then spaces, then the end of the field or a NUL (after which anything goes).
 * A field with no digits reads as 0. Returns 0 and sets *out, or -1 for anything else.
 */
static int octal_field(const unsigned char *p, Py_ssize_t width, long long *out) {
    Py_ssize_t i = 0;
    long long value = 0;
    if (width && p[0] & 0x80)
        return -1; /* base-256 */
    while (i < width && p[i] == ' ')
        i++;
    while (i < width && p[i] >= '0' && p[i] <= '7') {
        value = value * 8 + (p[i] - '0');
        i++;
    }
    while (i < width && p[i] == ' ')
        i++;
    if (i < width && p[i] != 0)
        return -1;
    *out = value;
    return 0;
}

/* The checksum field as int(field.rstrip(b"\0 "), 8): at least one digit, nothing else. */
static int checksum_field(const unsigned char *p, long long *out) {
    Py_ssize_t end = W_CHKSUM, i = 0;
    long long value = 0;
    while (end > 0 && (p[end - 1] == 0 || p[end - 1] == ' '))
        end--;
    while (i < end && p[i] == ' ')
        i++;
    if (i == end)
        return -1;
    for (; i < end; i++) {
        if (p[i] < '0' || p[i] > '7')
            return -1;
        value = value * 8 + (p[i] - '0');
    }
    *out = value;
    return 0;
}

static int checksum_ok(const unsigned char *h) {
    long long stored;
    long sum = 0;
    if (checksum_field(h + F_CHKSUM, &stored) < 0)
        return 0;
    for (int i = 0; i < BLOCK; i++)
        sum += h[i];
    for (int i = F_CHKSUM; i < F_CHKSUM + W_CHKSUM; i++)
        sum += ' ' - h[i];
    return sum == stored;
}

static int all_zero(const unsigned char *h) {
    for (int i = 0; i < BLOCK; i++)
        if (h[i])
            return 0;
    return 1;
}

/* A PAX decimal number: 1..18 ASCII digits (longer or anything else: Python decides). */
static int pax_int(const unsigned char *v, Py_ssize_t n, long long *out) {
    long long value = 0;
    if (n < 1 || n > MAX_PAX_DIGITS)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        value = value * 10 + (v[i] - '0');
    }
    *out = value;
    return 0;
}

/* Seconds to ns, clamped below to ext4's range; -1 when Python must decide. */
static int seconds_ns(int negative, long long sec, long long frac, long long *out) {
    if (sec > FAST_MAX_SEC)
        return -1;
    long long ns = sec * NS + frac;
    if (negative)
        ns = -ns;
    if (ns < MIN_SEC * NS)
        ns = MIN_SEC * NS;
    *out = ns;
    return 0;
}

/* A PAX time: "-?digits" or "-?digits?.digits*" (first 9 fraction digits count). */
static int pax_time(const unsigned char *v, Py_ssize_t n, long long *out) {
    Py_ssize_t i = 0;
    int negative = 0, digits = 0;
    long long sec = 0, frac = 0;
    if (i < n && v[i] == '-') {
        negative = 1;
        i++;
    }
    for (; i < n && v[i] >= '0' && v[i] <= '9'; i++, digits++) {
        if (digits >= 12)
            return -1;
        sec = sec * 10 + (v[i] - '0');
    }
    if (i == n)
        return digits ? seconds_ns(negative, sec, 0, out) : -1;
    if (v[i] != '.')
        return -1;
    i++;
    for (int k = 0; k < 9; k++) {
        frac *= 10;
        if (i < n) {
            if (v[i] < '0' || v[i] > '9')
                return -1;
            frac += v[i] - '0';
            i++;
        }
    }
    for (; i < n; i++)
        if (v[i] < '0' || v[i] > '9')
            return -1;
    return seconds_ns(negative, sec, frac, out);
}

static int key_is(const unsigned char *k, Py_ssize_t n, const char *name) {
    size_t len = strlen(name);
    return (size_t)n == len && memcmp(k, name, len) == 0;
}

static int key_starts(const unsigned char *k, Py_ssize_t n, const char *prefix) {
    size_t len = strlen(prefix);
    return (size_t)n >= len && memcmp(k, prefix, len) == 0;
}

/* Replace *slot with bytes(v[:n]); -2 on a Python error. */
static int set_bytes(PyObject **slot, const unsigned char *v, Py_ssize_t n) {
    PyObject *b = PyBytes_FromStringAndSize((const char *)v, n);
    if (!b)
        return -2;
    Py_XSETREF(*slot, b);
    return 0;
}

/* One record "key=value": 0 taken, -1 SLOW, -2 Python error. */
static int pax_record(Pax *pax, const unsigned char *k, Py_ssize_t kn, const unsigned char *v,
                      Py_ssize_t vn) {
    if (key_is(k, kn, "path"))
        return set_bytes(&pax->path, v, vn);
    if (key_is(k, kn, "linkpath"))
        return set_bytes(&pax->linkpath, v, vn);
    if (key_is(k, kn, "size"))
        return (pax->has_size = 1, pax_int(v, vn, &pax->size));
    if (key_is(k, kn, "uid"))
        return (pax->has_uid = 1, pax_int(v, vn, &pax->uid));
    if (key_is(k, kn, "gid"))
        return (pax->has_gid = 1, pax_int(v, vn, &pax->gid));
    if (key_is(k, kn, "mtime"))
        return (pax->has_mtime = 1, pax_time(v, vn, &pax->mtime));
    if (key_is(k, kn, "atime"))
        return (pax->has_atime = 1, pax_time(v, vn, &pax->atime));
    if (key_is(k, kn, "ctime"))
        return (pax->has_ctime = 1, pax_time(v, vn, &pax->ctime));
    if (key_is(k, kn, "SCHILY.devmajor"))
        return (pax->has_devmajor = 1, pax_int(v, vn, &pax->devmajor));
    if (key_is(k, kn, "SCHILY.devminor"))
        return (pax->has_devminor = 1, pax_int(v, vn, &pax->devminor));
    if (key_starts(k, kn, "GNU.sparse."))
        return -1;
    if (key_starts(k, kn, "SCHILY.xattr.")) {
        const Py_ssize_t skip = 13;
        if (!pax->xattrs && !(pax->xattrs = PyDict_New()))
            return -2;
        PyObject *name = PyBytes_FromStringAndSize((const char *)k + skip, kn - skip);
        PyObject *value = PyBytes_FromStringAndSize((const char *)v, vn);
        int rc = (name && value) ? PyDict_SetItem(pax->xattrs, name, value) : -1;
        Py_XDECREF(name);
        Py_XDECREF(value);
        return rc < 0 ? -2 : 0;
    }
    return 0; /* other keys: not used by the converter */
}

/* The records of one 'x' header: "len key=value\n" each, NUL padding after the last. */
static int pax_records(Pax *pax, const unsigned char *d, Py_ssize_t size) {
    Py_ssize_t pos = 0;
    pax->any = 1;
    while (pos < size) {
        if (d[pos] == 0)
            break;
        long long length = 0;
        Py_ssize_t i = pos;
        for (; i < size && i < pos + 23 && d[i] >= '0' && d[i] <= '9'; i++) {
            length = length * 10 + (d[i] - '0');
            if (length > size)
                return -1;
        }
        if (i == pos || i >= size || d[i] != ' ' || length <= 0 || pos + length > size ||
            d[pos + length - 1] != '\n')
            return -1;
        const unsigned char *key = d + i + 1;
        const unsigned char *stop = d + pos + length - 1;
        if (key > stop)
            return -1;
        const unsigned char *eq = memchr(key, '=', (size_t)(stop - key));
        if (!eq)
            return -1;
        int rc = pax_record(pax, key, eq - key, eq + 1, stop - eq - 1);
        if (rc)
            return rc;
        pos += length;
    }
    return 0;
}

static PyObject *header_name(const unsigned char *h) {
    Py_ssize_t n = field_len(h + F_NAME, W_NAME);
    if (memcmp(h + F_MAGIC, "ustar\0", 6) == 0 && h[F_PREFIX]) {
        Py_ssize_t pn = field_len(h + F_PREFIX, W_PREFIX);
        PyObject *b = PyBytes_FromStringAndSize(NULL, pn + 1 + n);
        if (!b)
            return NULL;
        char *s = PyBytes_AS_STRING(b);
        memcpy(s, h + F_PREFIX, (size_t)pn);
        s[pn] = '/';
        memcpy(s + pn + 1, h + F_NAME, (size_t)n);
        return b;
    }
    return PyBytes_FromStringAndSize((const char *)h + F_NAME, n);
}

static PyObject *long_or_none(int has, long long value) {
    if (has)
        return PyLong_FromLongLong(value);
    Py_RETURN_NONE;
}

/* Build the result tuple for the member whose own header is at buf + hpos. */
static PyObject *member(const unsigned char *buf, Py_ssize_t hpos, Py_ssize_t next, Pax *pax,
                        PyObject **long_name, PyObject **long_link) {
    const unsigned char *h = buf + hpos;
    long long mode, uid, gid, size, mtime = 0, devmajor = 0, devminor = 0;
    char type = h[F_TYPE] ? (char)h[F_TYPE] : '0';
    if (memcmp(h + F_MAGIC, "ustar ", 6) == 0 && type == 'S')
        return PyLong_FromLong(SLOW); /* old GNU sparse */
    if (octal_field(h + F_SIZE, W_NUM12, &size) < 0 || octal_field(h + F_MODE, W_ID, &mode) < 0)
        return PyLong_FromLong(SLOW);
    if (pax->has_uid)
        uid = pax->uid;
    else if (octal_field(h + F_UID, W_ID, &uid) < 0)
        return PyLong_FromLong(SLOW);
    if (pax->has_gid)
        gid = pax->gid;
    else if (octal_field(h + F_GID, W_ID, &gid) < 0)
        return PyLong_FromLong(SLOW);
    if (pax->has_mtime)
        mtime = pax->mtime;
    else {
        long long sec;
        if (octal_field(h + F_MTIME, W_NUM12, &sec) < 0 || seconds_ns(0, sec, 0, &mtime) < 0)
            return PyLong_FromLong(SLOW);
    }
    if (type == '3' || type == '4') {
        if (octal_field(h + F_DEVMAJOR, W_ID, &devmajor) < 0 ||
            octal_field(h + F_DEVMINOR, W_ID, &devminor) < 0)
            return PyLong_FromLong(SLOW);
    }
    if (pax->has_size)
        size = pax->size;
    if (pax->has_devmajor)
        devmajor = pax->devmajor;
    if (pax->has_devminor)
        devminor = pax->devminor;

    PyObject *name, *link;
    if (pax->path)
        name = Py_NewRef(pax->path);
    else if (*long_name)
        name = Py_NewRef(*long_name);
    else if (!(name = header_name(h)))
        return NULL;
    if (pax->linkpath)
        link = Py_NewRef(pax->linkpath);
    else if (*long_link)
        link = Py_NewRef(*long_link);
    else if (!(link = PyBytes_FromStringAndSize((const char *)h + F_LINK,
                                                 field_len(h + F_LINK, W_LINK)))) {
        Py_DECREF(name);
        return NULL;
    }
    PyObject *xattrs = pax->xattrs ? Py_NewRef(pax->xattrs) : Py_NewRef(Py_None);
    return Py_BuildValue("(NNLLLLLNNNLLNnn)", name, PyBytes_FromStringAndSize(&type, 1),
                         mode & 07777, uid, gid, size, mtime,
                         long_or_none(pax->has_atime, pax->atime),
                         long_or_none(pax->has_ctime, pax->ctime), link, devmajor, devminor,
                         xattrs, hpos, next);
}

static PyObject *scan(const unsigned char *buf, Py_ssize_t start, Py_ssize_t end,
                      long long max_meta, Pax *pax, PyObject **long_name,
                      PyObject **long_link) {
    Py_ssize_t pos = start;
    long long meta = 0;
    for (;;) {
        if (end - pos < BLOCK)
            return PyLong_FromSsize_t(pos + BLOCK - start);
        const unsigned char *h = buf + pos;
        if (h[0] == 0 && all_zero(h))
            return PyLong_FromLong(pos == start ? END : SLOW);
        if (!checksum_ok(h))
            return PyLong_FromLong(SLOW);
        char type = (char)h[F_TYPE];
        if (type != 'x' && type != 'g' && type != 'L' && type != 'K')
            return member(buf, pos, pos + BLOCK, pax, long_name, long_link);
        long long size;
        if (octal_field(h + F_SIZE, W_NUM12, &size) < 0)
            return PyLong_FromLong(SLOW);
        meta += size;
        if (meta > max_meta)
            return PyLong_FromLong(SLOW);
        Py_ssize_t data = pos + BLOCK;
        Py_ssize_t next = data + (Py_ssize_t)((size + BLOCK - 1) & ~(long long)(BLOCK - 1));
        if (end - next < BLOCK)
            return PyLong_FromSsize_t(next + BLOCK - start);
        int rc = 0;
        if (type == 'x')
            rc = pax_records(pax, buf + data, (Py_ssize_t)size);
        else if (type == 'L' || type == 'K')
            rc = set_bytes(type == 'L' ? long_name : long_link, buf + data,
                           field_len(buf + data, (Py_ssize_t)size));
        if (rc == -2)
            return NULL;
        if (rc)
            return PyLong_FromLong(SLOW);
        pos = next;
    }
}

static PyObject *scan_entry(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scan_entry(buf, start, end, max_meta)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    long long max_meta = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (start < 0 || end < start || end > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scan_entry: start/end outside the buffer");
        return NULL;
    }
    Pax pax = {0};
    PyObject *long_name = NULL, *long_link = NULL;
    PyObject *result = scan(view.buf, start, end, max_meta, &pax, &long_name, &long_link);
    pax_clear(&pax);
    Py_XDECREF(long_name);
    Py_XDECREF(long_link);
    PyBuffer_Release(&view);
    return result;
}

/* An entry name's components: split at '/', empty and "." components dropped. Returns
 * (parts, parent, longest, length): the components, the parent's path (the components but the
 * last, joined by '/'), the longest component and the path's length as "/a/b" would have it;
 * None when the name holds a NUL byte or a ".." component (the caller reports those). */
static PyObject *split_path(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "split_path(name: bytes)");
        return NULL;
    }
    const char *name = PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    if (memchr(name, '\0', (size_t)n))
        Py_RETURN_NONE;
    PyObject *parts = PyList_New(0);
    if (!parts)
        return NULL;
    Py_ssize_t longest = 0, length = 0, last_len = 0, i = 0;
    while (i < n) {
        Py_ssize_t start = i;
        const char *slash = memchr(name + i, '/', (size_t)(n - i));
        Py_ssize_t end = slash ? slash - name : n;
        Py_ssize_t len = end - start;
        i = end + 1;
        if (len == 0 || (len == 1 && name[start] == '.'))
            continue;
        if (len == 2 && name[start] == '.' && name[start + 1] == '.') {
            Py_DECREF(parts);
            Py_RETURN_NONE;
        }
        PyObject *part = PyBytes_FromStringAndSize(name + start, len);
        if (!part || PyList_Append(parts, part) < 0) {
            Py_XDECREF(part);
            Py_DECREF(parts);
            return NULL;
        }
        Py_DECREF(part);
        if (len > longest)
            longest = len;
        length += len + 1;
        last_len = len;
    }
    /* The parent: every component but the last, '/'-joined. */
    Py_ssize_t count = PyList_GET_SIZE(parts);
    Py_ssize_t parent_len = count > 1 ? length - last_len - 2 : 0;
    PyObject *parent = PyBytes_FromStringAndSize(NULL, parent_len);
    if (!parent) {
        Py_DECREF(parts);
        return NULL;
    }
    char *out = PyBytes_AS_STRING(parent);
    for (Py_ssize_t k = 0; k + 1 < count; k++) {
        PyObject *part = PyList_GET_ITEM(parts, k);
        Py_ssize_t len = PyBytes_GET_SIZE(part);
        if (k)
            *out++ = '/';
        memcpy(out, PyBytes_AS_STRING(part), (size_t)len);
        out += len;
    }
    return Py_BuildValue("(NNnn)", parts, parent, longest, length);
}

static PyMethodDef methods[] = {
    {"scan_entry", (PyCFunction)(void (*)(void))scan_entry, METH_FASTCALL,
     "scan_entry(buf, start, end, max_meta) -> tuple | int: one tar member's headers."},
    {"split_path", split_path, METH_O,
     "split_path(name) -> (parts, parent, longest, length) | None: an entry name's components."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "lcow._tarscan",
    "The common case of tar header parsing (see lcow.convert.tarstream).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tarscan(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "SLOW", SLOW) < 0 ||
              PyModule_AddIntConstant(m, "END", END) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
