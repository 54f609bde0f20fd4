/*
 * lcow._ext4pack: the per-inode loops of the ext4 writer's close phase, in C.
 *
 * pack_inodes() fills a chunk of the inode table from the Tree's typed columns and does the
 * bitmap / free-count / directory-count bookkeeping for every inode of the chunk; pack_dir()
 * packs one linear directory. The bytes are those of the pure-Python code they replace
 * (lcow/formats/ext4/inodes.py pack_inode_into, dirents.py pack_directory), which is the
 * spec; the field offsets follow the kernel's struct ext4_inode, ext4_extent_header,
 * ext4_extent and ext4_dir_entry_2 (Documentation/filesystems/ext4/). All fields are
 * little-endian and written byte by byte, so the host's byte order does not matter.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define BLOCK_SIZE 4096
#define INODE_SIZE 256
#define INODE_FIELDS 152 /* 128-byte base inode + EXTRA_ISIZE: what pack_inode_into writes */
#define EXTRA_ISIZE 24
#define LOST_AND_FOUND_INO 11
#define EXT4_EXTENT_MAGIC 0xF30A
#define EXTENTS_IN_INODE 4
#define MAX_EXTENT_LEN 32768
#define FLAG_EXTENTS 0x80000
#define MAX_NAME_LEN 255

/* Times are stored as ns + 2^31 s, so the biased seconds minus 2^31 are the real seconds. */
#define NS_PER_SEC 1000000000ULL
#define TIME_BIAS_SEC 2147483648LL
#define MAX_SEC 0x37FFFFFFFLL /* ext4's last second (epoch bits 3) */

/* S_IFMT and the file types: fixed by POSIX tar and Linux, spelled out so the host's
 * <sys/stat.h> cannot differ from Python's stat module. */
#define FMT_MASK 0170000
#define FMT_SOCK 0140000
#define FMT_LNK 0120000
#define FMT_REG 0100000
#define FMT_BLK 0060000
#define FMT_DIR 0040000
#define FMT_CHR 0020000
#define FMT_FIFO 0010000

/* Offsets in struct ext4_inode. */
enum {
    I_MODE = 0, I_UID = 2, I_SIZE_LO = 4, I_ATIME = 8, I_CTIME = 12, I_MTIME = 16,
    I_GID = 24, I_LINKS = 26, I_BLOCKS_LO = 28, I_FLAGS = 32, I_BLOCK = 40,
    I_FILE_ACL_LO = 104, I_SIZE_HIGH = 108, I_BLOCKS_HIGH = 116, I_UID_HIGH = 120,
    I_GID_HIGH = 122, I_EXTRA_ISIZE = 128, I_CTIME_EXTRA = 132, I_MTIME_EXTRA = 136,
    I_ATIME_EXTRA = 140, I_CRTIME = 144, I_CRTIME_EXTRA = 148,
};

static inline void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* ------------------------------------------------------------------------------------------ */
/* buffers */

/* The columns pack_inodes reads, in the order of its `columns` tuple. */
enum {
    C_MODE, C_UID, C_GID, C_LINKS, C_SIZE, C_MTIME, C_ATIME, C_CTIME, C_START, C_NBLOCKS,
    C_XATTR_BLOCK, C_EXTRA_BLOCKS, N_COLUMNS,
};
static const char COLUMN_FORMAT[N_COLUMNS] = {
    'H', 'I', 'I', 'I', 'Q', 'Q', 'Q', 'Q', 'Q', 'Q', 'I', 'I',
};
static const char *const COLUMN_NAME[N_COLUMNS] = {
    "mode", "uid", "gid", "links", "size", "mtime", "atime", "ctime", "start", "nblocks",
    "xattr_block", "extra_blocks",
};

/* Bytes per item as this module reads them (uint16/32/64_t); 'B' is any bytes-like. */
static Py_ssize_t item_size(char format)
{
    switch (format) {
    case 'H': return 2;
    case 'I': return 4;
    case 'Q': return 8;
    default: return 1;
    }
}

/* Get a contiguous buffer of at least `need` items of `format` ('B' = any bytes-like).
 * Returns 0 with `view` held, or -1 with an exception set and nothing held. */
static int get_buffer(PyObject *obj, char format, Py_ssize_t need, int writable, const char *what,
                      Py_buffer *view)
{
    int flags = PyBUF_C_CONTIGUOUS | (format == 'B' ? 0 : PyBUF_FORMAT) |
                (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    Py_ssize_t size = item_size(format);
    if (format != 'B') {
        const char *given = view->format != NULL ? view->format : "B"; /* NULL means bytes */
        const char *f = given[0] == '@' ? given + 1 : given;
        if (f[0] != format || f[1] != '\0' || view->itemsize != size) {
            PyErr_Format(PyExc_TypeError, "%s must be an array('%c'), not format '%s'", what,
                         format, given);
            PyBuffer_Release(view);
            return -1;
        }
    }
    if (view->len / size < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd items, %zd needed", what, view->len / size,
                     need);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* inodes */

/* i_xtime and i_xtime_extra of a biased time, as inodes.encode_time: the low 32 bits of the
 * seconds, then epoch bits (how many 2^32 s past the signed 32-bit range) | ns << 2. */
static void encode_time(uint64_t biased, uint32_t *low, uint32_t *extra)
{
    int64_t sec = (int64_t)(biased / NS_PER_SEC) - TIME_BIAS_SEC; /* >= -2^31: never below */
    uint32_t nsec = (uint32_t)(biased % NS_PER_SEC);
    if (sec > MAX_SEC) {
        sec = MAX_SEC;
        nsec = 999999999;
    }
    uint32_t lo = (uint32_t)(uint64_t)sec;
    int64_t signed_lo = lo & 0x80000000u ? (int64_t)lo - 0x100000000LL : (int64_t)lo;
    uint32_t epoch = (uint32_t)((uint64_t)(sec - signed_lo) >> 32) & 3; /* sec >= signed_lo */
    *low = lo;
    *extra = epoch | (nsec << 2);
}

/* The depth-0 extent root mapping `nblocks` (<= 4 * 32768) blocks from `start`, as
 * split_runs + build_extent_tree produce it: extents of 32768 blocks, then the rest. */
static void dense_root(uint8_t *iblock, uint64_t start, uint64_t nblocks)
{
    uint32_t entries = (uint32_t)((nblocks + MAX_EXTENT_LEN - 1) / MAX_EXTENT_LEN);
    put16(iblock, EXT4_EXTENT_MAGIC);
    put16(iblock + 2, entries);
    put16(iblock + 4, EXTENTS_IN_INODE);
    /* eh_depth and eh_generation stay 0 */
    for (uint32_t k = 0; k < entries; k++) {
        uint64_t logical = (uint64_t)k * MAX_EXTENT_LEN;
        uint64_t left = nblocks - logical;
        uint64_t physical = start + logical;
        uint8_t *e = iblock + 12 + 12 * k;
        put32(e, (uint32_t)logical);
        put16(e + 4, (uint32_t)(left < MAX_EXTENT_LEN ? left : MAX_EXTENT_LEN));
        put16(e + 6, (uint32_t)(physical >> 32) & 0xFFFF);
        put32(e + 8, (uint32_t)physical);
    }
}

typedef struct {
    const uint16_t *mode;
    const uint32_t *uid, *gid, *links, *xattr_block, *extra_blocks;
    const uint64_t *size, *mtime, *atime, *ctime, *start, *nblocks;
} Columns;

/* Pack a "plain" inode into its zeroed slot; returns 0 (slot untouched) when the inode needs
 * the Python packer: symlinks, long files (deep extent trees), devices or fifos that map blocks,
 * link counts that do not fit, unknown types. */
static int pack_plain(uint8_t *slot, const Columns *c, Py_ssize_t ino)
{
    uint32_t mode = c->mode[ino];
    uint32_t fmt = mode & FMT_MASK;
    uint64_t nblocks = c->nblocks[ino];
    uint32_t flags = 0;
    uint32_t links = c->links[ino];

    if (fmt == FMT_DIR) {
        if (links > 0xFFFF - 2)
            return 0;
        links += 2; /* "." and the parent's entry; `links` counts subdirectories */
    } else if (links > 0xFFFF) {
        return 0;
    }
    if (fmt == FMT_REG || fmt == FMT_DIR) {
        if (nblocks > (uint64_t)EXTENTS_IN_INODE * MAX_EXTENT_LEN)
            return 0;
        dense_root(slot + I_BLOCK, c->start[ino], nblocks); /* 0 blocks: the empty root */
        flags = FLAG_EXTENTS;
    } else if (fmt == FMT_FIFO || fmt == FMT_SOCK || fmt == FMT_CHR || fmt == FMT_BLK) {
        if (nblocks)
            return 0;
        /* i_block stays zero; devices reach here only without an rdev (rdev 0) */
    } else {
        return 0;
    }

    uint64_t size = c->size[ino];
    uint32_t uid = c->uid[ino], gid = c->gid[ino];
    uint64_t sectors = (nblocks + c->extra_blocks[ino]) * 8;
    uint32_t atime, atime_x, ctime, ctime_x, mtime, mtime_x;
    encode_time(c->atime[ino], &atime, &atime_x);
    encode_time(c->ctime[ino], &ctime, &ctime_x);
    encode_time(c->mtime[ino], &mtime, &mtime_x);

    put16(slot + I_MODE, mode);
    put16(slot + I_UID, uid & 0xFFFF);
    put32(slot + I_SIZE_LO, (uint32_t)size);
    put32(slot + I_ATIME, atime);
    put32(slot + I_CTIME, ctime);
    put32(slot + I_MTIME, mtime);
    put16(slot + I_GID, gid & 0xFFFF);
    put16(slot + I_LINKS, links);
    put32(slot + I_BLOCKS_LO, (uint32_t)sectors);
    put32(slot + I_FLAGS, flags);
    put32(slot + I_FILE_ACL_LO, c->xattr_block[ino]);
    put32(slot + I_SIZE_HIGH, (uint32_t)(size >> 32));
    put16(slot + I_BLOCKS_HIGH, (uint32_t)(sectors >> 32) & 0xFFFF);
    put16(slot + I_UID_HIGH, uid >> 16);
    put16(slot + I_GID_HIGH, gid >> 16);
    put16(slot + I_EXTRA_ISIZE, EXTRA_ISIZE);
    put32(slot + I_CTIME_EXTRA, ctime_x);
    put32(slot + I_MTIME_EXTRA, mtime_x);
    put32(slot + I_ATIME_EXTRA, atime_x);
    put32(slot + I_CRTIME, mtime); /* creation time = the archive's mtime */
    put32(slot + I_CRTIME_EXTRA, mtime_x);
    return 1;
}

typedef struct {
    uint8_t *table;
    const uint8_t *special;
    uint32_t *dirs, *free_inodes;
    uint8_t *bitmaps;
} Outputs;

/* The chunk loop; returns a new list of the live inodes left for Python, or NULL. */
static PyObject *pack_range(const Columns *c, const Outputs *o, Py_ssize_t first,
                            Py_ssize_t last, Py_ssize_t ipg)
{
    PyObject *left = PyList_New(0);
    if (left == NULL)
        return NULL;
    Py_ssize_t group = (first - 1) / ipg, index = (first - 1) % ipg;
    for (Py_ssize_t ino = first; ino < last; ino++, index++) {
        if (index == ipg) {
            index = 0;
            group++;
        }
        uint16_t mode = c->mode[ino];
        if (mode == 0) {
            if (ino >= LOST_AND_FOUND_INO)
                continue; /* free: slot and bit stay zero */
            /* reserved inodes 1..10 are in use even though empty */
        } else {
            /* A live inode is a directory exactly when the Tree has its children. */
            if ((mode & FMT_MASK) == FMT_DIR)
                o->dirs[group]++;
            uint8_t *slot = o->table + (ino - first) * INODE_SIZE;
            if (o->special[ino] || !pack_plain(slot, c, ino)) {
                PyObject *n = PyLong_FromSsize_t(ino);
                if (n == NULL || PyList_Append(left, n) < 0) {
                    Py_XDECREF(n);
                    Py_DECREF(left);
                    return NULL;
                }
                Py_DECREF(n);
            }
        }
        o->bitmaps[group * BLOCK_SIZE + (index >> 3)] |= (uint8_t)(1u << (index & 7));
        o->free_inodes[group]--;
    }
    return left;
}

PyDoc_STRVAR(pack_inodes_doc,
"pack_inodes(table, first, last, ipg, columns, special, dirs, free_inodes, bitmaps)\n"
"--\n\n"
"Pack inodes [first, last) into the zeroed inode table chunk `table` (slot 0 = `first`),\n"
"except those flagged in `special` (indexed by inode number) and the few kinds only the\n"
"Python packer handles. For every inode of the range, set its bit in `bitmaps` (one 4 KiB\n"
"inode bitmap per group, back to back) and count it in `free_inodes` / `dirs` (array('I')\n"
"per group). `columns` is the tuple (mode, uid, gid, links, size, mtime, atime, ctime, start,\n"
"nblocks, xattr_block, extra_blocks) of arrays indexed by inode number. Returns the live\n"
"inodes it did not pack, ascending.");

static PyObject *pack_inodes(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *table_obj, *columns, *special_obj, *dirs_obj, *free_obj, *bitmaps_obj;
    Py_ssize_t first, last, ipg;
    if (!PyArg_ParseTuple(args, "OnnnO!OOOO:pack_inodes", &table_obj, &first, &last, &ipg,
                          &PyTuple_Type, &columns, &special_obj, &dirs_obj, &free_obj,
                          &bitmaps_obj))
        return NULL;
    if (first < 1 || last < first || ipg < 1 || ipg > BLOCK_SIZE * 8) {
        PyErr_SetString(PyExc_ValueError, "need 1 <= first <= last and 1 <= ipg <= 32768");
        return NULL;
    }
    if (PyTuple_GET_SIZE(columns) != N_COLUMNS) {
        PyErr_Format(PyExc_TypeError, "columns must be a tuple of %d arrays", N_COLUMNS);
        return NULL;
    }
    Py_ssize_t groups = last > first ? (last - 2) / ipg + 1 : 0;

    Py_buffer views[N_COLUMNS + 5];
    int held = 0;
    PyObject *result = NULL;
    for (; held < N_COLUMNS; held++) {
        if (get_buffer(PyTuple_GET_ITEM(columns, held), COLUMN_FORMAT[held], last, 0,
                       COLUMN_NAME[held], &views[held]) < 0)
            goto done;
    }
    if (get_buffer(table_obj, 'B', (last - first) * INODE_SIZE, 1, "table", &views[held]) < 0)
        goto done;
    held++;
    if (get_buffer(special_obj, 'B', last, 0, "special", &views[held]) < 0)
        goto done;
    held++;
    if (get_buffer(dirs_obj, 'I', groups, 1, "dirs", &views[held]) < 0)
        goto done;
    held++;
    if (get_buffer(free_obj, 'I', groups, 1, "free_inodes", &views[held]) < 0)
        goto done;
    held++;
    if (get_buffer(bitmaps_obj, 'B', groups * BLOCK_SIZE, 1, "bitmaps", &views[held]) < 0)
        goto done;
    held++;

    Columns c = {
        .mode = views[C_MODE].buf,
        .uid = views[C_UID].buf,
        .gid = views[C_GID].buf,
        .links = views[C_LINKS].buf,
        .size = views[C_SIZE].buf,
        .mtime = views[C_MTIME].buf,
        .atime = views[C_ATIME].buf,
        .ctime = views[C_CTIME].buf,
        .start = views[C_START].buf,
        .nblocks = views[C_NBLOCKS].buf,
        .xattr_block = views[C_XATTR_BLOCK].buf,
        .extra_blocks = views[C_EXTRA_BLOCKS].buf,
    };
    Outputs o = {
        .table = views[N_COLUMNS].buf,
        .special = views[N_COLUMNS + 1].buf,
        .dirs = views[N_COLUMNS + 2].buf,
        .free_inodes = views[N_COLUMNS + 3].buf,
        .bitmaps = views[N_COLUMNS + 4].buf,
    };
    result = pack_range(&c, &o, first, last, ipg);
done:
    while (held > 0)
        PyBuffer_Release(&views[--held]);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* directories */

typedef struct {
    uint32_t ino;
    uint8_t ftype;
    uint8_t name_len;
    const char *name; /* borrowed from the dict's key, which outlives the call */
} Dirent;

/* ext4_dir_entry_2.file_type of a mode, as writer._FTYPE; -1 for none. */
static int file_type(uint32_t mode)
{
    switch (mode & FMT_MASK) {
    case FMT_REG: return 1;
    case FMT_DIR: return 2;
    case FMT_CHR: return 3;
    case FMT_BLK: return 4;
    case FMT_FIFO: return 5;
    case FMT_SOCK: return 6;
    case FMT_LNK: return 7;
    default: return -1;
    }
}

static inline Py_ssize_t rec_len(Py_ssize_t name_len)
{
    return (8 + name_len + 3) & ~(Py_ssize_t)3;
}

/* How many blocks the entries take: an entry never crosses a block. */
static Py_ssize_t layout_blocks(const Dirent *entries, Py_ssize_t n)
{
    Py_ssize_t blocks = 1, pos = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len = rec_len(entries[i].name_len);
        if (pos + len > BLOCK_SIZE) {
            blocks++;
            pos = 0;
        }
        pos += len;
    }
    return blocks;
}

/* Write the entries into `out` (zeroed, layout_blocks() long); the last entry of each block
 * stretches to the block's end. */
static void write_entries(uint8_t *out, const Dirent *entries, Py_ssize_t n)
{
    Py_ssize_t block = 0, pos = 0, last = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len = rec_len(entries[i].name_len);
        if (pos + len > block + BLOCK_SIZE) {
            put16(out + last + 4, (uint32_t)(block + BLOCK_SIZE - last));
            block += BLOCK_SIZE;
            pos = block;
        }
        uint8_t *e = out + pos;
        put32(e, entries[i].ino);
        put16(e + 4, (uint32_t)len);
        e[6] = entries[i].name_len;
        e[7] = entries[i].ftype;
        memcpy(e + 8, entries[i].name, entries[i].name_len);
        last = pos;
        pos += len;
    }
    put16(out + last + 4, (uint32_t)(block + BLOCK_SIZE - last));
}

static int to_ino(PyObject *obj, uint32_t *ino)
{
    unsigned long v = PyLong_AsUnsignedLong(obj);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (v > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_OverflowError, "inode number does not fit 32 bits");
        return -1;
    }
    *ino = (uint32_t)v;
    return 0;
}

/* Collect "." / ".." / the children into `entries` (sized for all). 0 or -1 with an error. */
static int collect(Dirent *entries, uint32_t ino, uint32_t parent, PyObject *children,
                   const uint16_t *modes, Py_ssize_t nmodes)
{
    entries[0] = (Dirent){ino, 2, 1, "."};
    entries[1] = (Dirent){parent, 2, 2, ".."};
    Py_ssize_t pos = 0, i = 2;
    PyObject *key, *value;
    while (PyDict_Next(children, &pos, &key, &value)) {
        if (!PyBytes_Check(key) || !PyLong_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "children must map bytes names to int inodes");
            return -1;
        }
        Py_ssize_t name_len = PyBytes_GET_SIZE(key);
        if (name_len > MAX_NAME_LEN) {
            PyErr_Format(PyExc_ValueError, "name of %zd bytes is too long", name_len);
            return -1;
        }
        Dirent *d = &entries[i++];
        if (to_ino(value, &d->ino) < 0)
            return -1;
        if (d->ino >= (uint64_t)nmodes) {
            PyErr_SetString(PyExc_IndexError, "array index out of range");
            return -1;
        }
        int ftype = file_type(modes[d->ino]);
        if (ftype < 0) { /* as _FTYPE[...] would */
            PyObject *fmt = PyLong_FromLong((long)(modes[d->ino] & FMT_MASK));
            if (fmt != NULL) {
                PyErr_SetObject(PyExc_KeyError, fmt);
                Py_DECREF(fmt);
            }
            return -1;
        }
        d->ftype = (uint8_t)ftype;
        d->name_len = (uint8_t)name_len;
        d->name = PyBytes_AS_STRING(key);
    }
    return 0;
}

PyDoc_STRVAR(pack_dir_doc,
"pack_dir(ino, parent, children, mode)\n"
"--\n\n"
"The linear directory blocks of `ino`: '.', '..' (`parent`), then `children` (name -> inode)\n"
"in dict order, each typed from `mode` (array('H') indexed by inode number). KeyError for a\n"
"child whose mode has no directory-entry file type.");

static PyObject *pack_dir(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ino_obj, *parent_obj, *children, *mode_obj;
    if (!PyArg_ParseTuple(args, "OOO!O:pack_dir", &ino_obj, &parent_obj, &PyDict_Type, &children,
                          &mode_obj))
        return NULL;
    uint32_t ino, parent;
    if (to_ino(ino_obj, &ino) < 0 || to_ino(parent_obj, &parent) < 0)
        return NULL;
    Py_buffer modes;
    if (get_buffer(mode_obj, 'H', 0, 0, "mode", &modes) < 0)
        return NULL;
    Py_ssize_t n = PyDict_GET_SIZE(children) + 2;
    Dirent *entries = PyMem_New(Dirent, (size_t)n);
    PyObject *out = NULL;
    if (entries == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* No Python code runs from here on, so the dict and its keys stay as collected. */
    if (collect(entries, ino, parent, children, modes.buf, modes.len / modes.itemsize) < 0)
        goto done;
    Py_ssize_t blocks = layout_blocks(entries, n);
    out = PyByteArray_FromStringAndSize(NULL, blocks * BLOCK_SIZE);
    if (out == NULL)
        goto done;
    uint8_t *buf = (uint8_t *)PyByteArray_AS_STRING(out);
    memset(buf, 0, (size_t)(blocks * BLOCK_SIZE));
    write_entries(buf, entries, n);
done:
    PyMem_Free(entries);
    PyBuffer_Release(&modes);
    return out;
}

/* ------------------------------------------------------------------------------------------ */

static PyMethodDef methods[] = {
    {"pack_inodes", pack_inodes, METH_VARARGS, pack_inodes_doc},
    {"pack_dir", pack_dir, METH_VARARGS, pack_dir_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "lcow._ext4pack",
    .m_doc = "C versions of the ext4 writer's inode-table and directory packing.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__ext4pack(void)
{
    return PyModule_Create(&module);
}
