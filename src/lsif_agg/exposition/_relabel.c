/* The compiled kernel of the fast path: check a run of sample lines of one family and add the
 * worker label to each, without making a Python object per line.
 *
 * It accepts only lines that the general reader in read.py would write back unchanged apart
 * from the added label, and returns None for anything else, so that the general reader handles
 * that run. A line is accepted when it is
 *
 *     name[{label="value",...}] value[ timestamp]\n
 *
 * The metric name is a legacy name and one of the family's sample names. The label set is not
 * empty, and its legacy label names are each given once. Label values contain no escapes but
 * \\, \" and \n. The value and the timestamp are as syntax.py accepts them, and single blanks
 * separate the tokens. An exemplar, a label named like the added one, blank lines, `{}`, a
 * trailing comma and a series repeated within the run are all left to the general reader.
 *
 * When the output format differs from the body's, the general reader converts timestamps and
 * drops exemplars but writes every other byte of a sample line as it came. So scan_body with
 * `converting` set writes a text body's integer milliseconds as OpenMetrics seconds, and
 * OpenMetrics seconds without an exponent as milliseconds. It leaves other OpenMetrics
 * timestamps to the general reader. read.py checks that the run's sample names all belong to
 * one output family.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_tokens.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Far above what client libraries write. A line with more labels goes to the general reader. */
#define MAX_LABELS 64
/* A histogram or summary family has at most four sample names, and the mask has room for eight. */
#define MAX_ALLOWED 8

enum {
    METRIC_START = 1, /* [a-zA-Z_:] */
    METRIC_REST = 2,  /* [a-zA-Z0-9_:] */
    LABEL_START = 4,  /* [a-zA-Z_] */
    LABEL_REST = 8,   /* [a-zA-Z0-9_] */
    DIGIT = 16,       /* [0-9] */
    VALUE_STOP = 32,  /* `"`, `\` or a newline, which end the plain part of a label value */
};

static unsigned char classes[256];

static void
fill_classes(void)
{
    for (int c = 0; c < 256; c++) {
        unsigned char class = 0;
        int letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        int digit = c >= '0' && c <= '9';
        if (letter || c == ':')
            class |= METRIC_START | METRIC_REST;
        if (digit)
            class |= METRIC_REST | LABEL_REST | DIGIT;
        if (letter)
            class |= LABEL_START | LABEL_REST;
        if (c == '"' || c == '\\' || c == '\n')
            class |= VALUE_STOP;
        classes[c] = class;
    }
}

#define IS(c, class) (classes[(unsigned char)(c)] & (class))

static inline uint64_t
load_word(const char *s)
{
    uint64_t word;
    memcpy(&word, s, 8);
    return word;
}

/* Whether n bytes at a and b are equal; inline, because most names are shorter than the cost
 * of a call to memcmp. Past the first word, the last bytes are compared as the word that ends
 * with them. */
static inline int
same_bytes(const char *a, const char *b, Py_ssize_t n)
{
    if (n >= 8) {
        for (Py_ssize_t i = 0; i + 8 <= n; i += 8) {
            if (load_word(a + i) != load_word(b + i))
                return 0;
        }
        return load_word(a + n - 8) == load_word(b + n - 8);
    }
    for (; n > 0; a++, b++, n--) {
        if (*a != *b)
            return 0;
    }
    return 1;
}


/* Where one accepted line's parts end, as offsets into the run. */
typedef struct {
    Py_ssize_t start;
    Py_ssize_t name_end; /* the byte after the metric name: `{` or the blank */
    Py_ssize_t key_end;  /* the byte after the series: after `}`, or name_end */
    Py_ssize_t end;      /* the newline, or the end of a run without a final newline */
    Py_ssize_t stamp;    /* the timestamp's first byte when it is converted, else -1 */
    uint64_t hash;       /* of the series bytes, for finding repeats */
} Line;

typedef struct {
    const char *names[MAX_ALLOWED];
    Py_ssize_t lengths[MAX_ALLOWED];
    int count;
    int collect; /* add each new name to `names`, for a run whose family is not yet known */
    const char *clashing; /* the added label's name, or NULL when no label is added */
    Py_ssize_t clashing_length;
    int openmetrics;
    int converting; /* the output format differs, so timestamps are converted or rejected */
    /* Label names checked before in this body, which most lines repeat: a name found here is
     * known to be legacy and not the added label's. */
    const char *known[8];
    Py_ssize_t known_lengths[8];
    int known_count;
    unsigned int wide; /* nonzero once a byte above 0x7f was seen */
} Rules;

static int
find_allowed(Rules *rules, const char *name, Py_ssize_t length)
{
    for (int i = 0; i < rules->count; i++) {
        if (rules->lengths[i] == length && memcmp(rules->names[i], name, (size_t)length) == 0)
            return i;
    }
    if (!rules->collect || rules->count == MAX_ALLOWED)
        return -1;
    rules->names[rules->count] = name;
    rules->lengths[rules->count] = length;
    return rules->count++;
}

/* Return the first `"`, `\\` or newline in p..e, or e. Label values are scanned 16 bytes at a
 * time where the compiler targets SSE2, which every x86-64 processor has. Any byte above 0x7f
 * seen, also a few past the stop, sets bits in *wide: such a body must be checked as UTF-8. */
static inline const char *
find_value_stop(const char *p, const char *e, unsigned int *wide)
{
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i backslash = _mm_set1_epi8('\\');
    const __m128i newline = _mm_set1_epi8('\n');
    while (e - p >= 16) {
        __m128i chunk = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i stops = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(chunk, quote),
                                                  _mm_cmpeq_epi8(chunk, backslash)),
                                     _mm_cmpeq_epi8(chunk, newline));
        int mask = _mm_movemask_epi8(stops);
        *wide |= (unsigned int)_mm_movemask_epi8(chunk);
        if (mask != 0)
            return p + __builtin_ctz((unsigned int)mask);
        p += 16;
    }
#endif
    while (p < e && !IS(*p, VALUE_STOP)) {
        *wide |= (unsigned char)*p & 0x80;
        p++;
    }
    return p;
}

/* Read the label set after `{` up to and including `}`; return the byte after it, or NULL. */
static const char *
scan_labels(const char *p, const char *e, Rules *rules)
{
    const char *names[MAX_LABELS];
    Py_ssize_t lengths[MAX_LABELS];
    int count = 0;

    for (;;) {
        /* The label name: legacy alphabet, not the added label's, not given before. */
        const char *name = p;
        Py_ssize_t length = -1;
        for (int k = 0; k < rules->known_count; k++) {
            Py_ssize_t known = rules->known_lengths[k];
            if (e - p > known && p[known] == '=' && same_bytes(p, rules->known[k], known)) {
                length = known;
                p += known;
                break;
            }
        }
        if (length < 0) {
            if (p >= e || !IS(*p, LABEL_START))
                return NULL;
            p++;
            while (p < e && IS(*p, LABEL_REST))
                p++;
            length = p - name;
            if (rules->clashing != NULL && length == rules->clashing_length &&
                same_bytes(name, rules->clashing, length))
                return NULL;
            if (rules->known_count < 8) {
                rules->known[rules->known_count] = name;
                rules->known_lengths[rules->known_count++] = length;
            }
        }
        if (count == MAX_LABELS)
            return NULL;
        for (int i = 0; i < count; i++) {
            if (lengths[i] == length && same_bytes(names[i], name, length))
                return NULL;
        }
        names[count] = name;
        lengths[count] = length;
        count++;

        /* The quoted value, with only the escapes that are written back unchanged. */
        if (e - p < 2 || p[0] != '=' || p[1] != '"')
            return NULL;
        p += 2;
        for (;;) {
            p = find_value_stop(p, e, &rules->wide);
            if (p >= e || *p == '\n')
                return NULL;
            if (*p == '"')
                break;
            if (e - p < 2 || (p[1] != '\\' && p[1] != '"' && p[1] != 'n'))
                return NULL;
            p += 2;
        }
        p++;

        if (p >= e)
            return NULL;
        if (*p == '}')
            return p + 1;
        if (*p != ',')
            return NULL;
        p++;
    }
}

/* Whether checked OpenMetrics seconds have no exponent and at most 15 whole digits, so that
 * their milliseconds fit in an int64, as syntax._PLAIN_SECONDS. */
static int
is_plain_seconds(const char *s, const char *e)
{
    if (s < e && (*s == '+' || *s == '-'))
        s++;
    Py_ssize_t whole = 0;
    while (s < e && IS(*s, DIGIT)) {
        s++;
        whole++;
    }
    if (whole > 15)
        return 0;
    if (s < e && *s == '.') {
        s++;
        while (s < e && IS(*s, DIGIT))
            s++;
    }
    return s == e;
}

static int
scan_rest(const char *run, const char *p, const char *e, Rules *rules, Line *line);
static int
scan_tail(const char *run, const char *p, const char *e, const Rules *rules, Line *line);

/* Check one line that starts at `start`; fill `line` and return the allowed name's index,
 * or -1 when the general reader must read it. */
static int
scan_line(const char *run, Py_ssize_t start, Py_ssize_t size, Rules *rules, Line *line)
{
    const char *p = run + start, *e = run + size;

    const char *name = p;
    if (p >= e || !IS(*p, METRIC_START))
        return -1;
    p++;
    while (p < e && IS(*p, METRIC_REST))
        p++;
    int allowed = find_allowed(rules, name, p - name);
    if (allowed < 0)
        return -1;
    line->start = start;
    return scan_rest(run, p, e, rules, line) < 0 ? -1 : allowed;
}

/* Check the rest of a line whose metric name ends at p, and fill `line` but for its start.
 * Return 0, or -1 when the general reader must read it. */
static int
scan_rest(const char *run, const char *p, const char *e, Rules *rules, Line *line)
{
    line->name_end = p - run;
    if (p < e && *p == '{') {
        p = scan_labels(p + 1, e, rules);
        if (p == NULL)
            return -1;
    }
    line->key_end = p - run;
    return scan_tail(run, p, e, rules, line);
}

/* Check the value and timestamp after a series that ends at p, and fill the rest of `line`.
 * Return 0, or -1 when the general reader must read it. */
static int
scan_tail(const char *run, const char *p, const char *e, const Rules *rules, Line *line)
{
    /* The value, then an optional timestamp, each after one blank. */
    if (p >= e || *p != ' ')
        return -1;
    const char *value = ++p;
    while (p < e && IS(*p, DIGIT))
        p++;
    if (p == value || (p < e && *p != ' ' && *p != '\n')) {
        /* Not a plain integer, the most common value: read the whole token. */
        while (p < e && *p != ' ' && *p != '\n')
            p++;
        if (!is_value(value, p))
            return -1;
    }
    line->stamp = -1;
    if (p < e && *p == ' ') {
        const char *timestamp = ++p;
        while (p < e && *p != ' ' && *p != '\n')
            p++;
        if (!is_timestamp(timestamp, p, rules->openmetrics))
            return -1;
        if (rules->converting && rules->openmetrics && !is_plain_seconds(timestamp, p))
            return -1; /* the general reader converts it with decimal arithmetic */
        if (rules->converting)
            line->stamp = timestamp - run;
    }
    if (p < e && *p != '\n')
        return -1; /* an exemplar or a trailing blank */
    line->end = p - run;
    return 0;
}

/* Return 1 when two lines of the run have the same series, 0 when none do, -1 on no memory. */
static int
has_repeats(const char *run, Line *lines, Py_ssize_t count)
{
    if (count < 2)
        return 0;
    size_t slots = 4;
    while (slots < (size_t)count * 2)
        slots <<= 1;
    Py_ssize_t *table = PyMem_Malloc(slots * sizeof(Py_ssize_t));
    if (table == NULL)
        return -1;
    memset(table, 0xff, slots * sizeof(Py_ssize_t)); /* -1: an empty slot */

    int repeated = 0;
    for (Py_ssize_t i = 0; i < count && !repeated; i++) {
        Line *line = &lines[i];
        Py_ssize_t length = line->key_end - line->start;
        line->hash = hash_bytes(run + line->start, length);
        size_t slot = (size_t)line->hash & (slots - 1);
        while (table[slot] >= 0) {
            Line *other = &lines[table[slot]];
            if (other->hash == line->hash && other->key_end - other->start == length &&
                memcmp(run + other->start, run + line->start, (size_t)length) == 0) {
                repeated = 1;
                break;
            }
            slot = (slot + 1) & (slots - 1);
        }
        table[slot] = i;
    }
    PyMem_Free(table);
    return repeated;
}

/* The lines of one run, in an array reused from run to run. */
typedef struct {
    Line *lines;
    Py_ssize_t capacity;
} LineBuffer;

static int
grow_lines(LineBuffer *buffer)
{
    Py_ssize_t capacity = buffer->capacity ? buffer->capacity * 2 : 256;
    Line *lines = PyMem_Realloc(buffer->lines, (size_t)capacity * sizeof(Line));
    if (lines == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    buffer->lines = lines;
    buffer->capacity = capacity;
    return 0;
}

/* Return where the run that contains `position` ends: after the last newline before a line
 * that starts with `#`, or at the end of the text. */
static Py_ssize_t
find_run_end(const char *text, Py_ssize_t position, Py_ssize_t size)
{
    for (;;) {
        const char *newline = memchr(text + position, '\n', (size_t)(size - position));
        if (newline == NULL)
            return size;
        position = newline - text + 1;
        if (position == size || text[position] == '#')
            return position;
    }
}

/* Scan the lines from `start` up to the next line that starts with `#`, and set *run_end to
 * where they end. Return the line count, -1 when a line needs the general reader, or -2 with
 * an exception set. */
static Py_ssize_t
scan_run(const char *text, Py_ssize_t start, Py_ssize_t size, Rules *rules, LineBuffer *buffer,
         unsigned int *names_seen, Py_ssize_t *run_end)
{
    Py_ssize_t count = 0, position = start;
    while (position < size && text[position] != '#') {
        if (count == buffer->capacity && grow_lines(buffer) < 0)
            return -2;
        Line *line = &buffer->lines[count];
        int allowed = scan_line(text, position, size, rules, line);
        if (allowed < 0) {
            *run_end = find_run_end(text, position, size);
            return -1;
        }
        *names_seen |= 1u << allowed;
        position = line->end + 1;
        count++;
    }
    *run_end = position < size ? position : size;
    return count;
}

static int
read_rules(Rules *rules, PyObject *allowed, PyObject *clashing, int openmetrics)
{
    Py_ssize_t count = PyTuple_GET_SIZE(allowed);
    if (count > MAX_ALLOWED) {
        PyErr_Format(PyExc_ValueError, "at most %d sample names are supported, got %zd",
                     MAX_ALLOWED, count);
        return -1;
    }
    rules->count = (int)count;
    rules->collect = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = PyTuple_GET_ITEM(allowed, i);
        if (!PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "sample names must be bytes");
            return -1;
        }
        rules->names[i] = PyBytes_AS_STRING(name);
        rules->lengths[i] = PyBytes_GET_SIZE(name);
    }

    rules->clashing = NULL;
    rules->clashing_length = 0;
    if (clashing != Py_None) {
        if (!PyBytes_Check(clashing)) {
            PyErr_SetString(PyExc_TypeError, "label_name must be bytes or None");
            return -1;
        }
        rules->clashing = PyBytes_AS_STRING(clashing);
        rules->clashing_length = PyBytes_GET_SIZE(clashing);
    }
    rules->openmetrics = openmetrics;
    rules->converting = 0;
    rules->known_count = 0;
    rules->wide = 0;
    return 0;
}

/* Write checked plain seconds s..e as integer milliseconds, cutting the digits after the
 * third decimal, as syntax.seconds_to_milliseconds does. Return the length written: at most
 * 3 bytes more than e - s, for "5" becomes "5000". */
static Py_ssize_t
write_milliseconds(char *out, const char *s, const char *e)
{
    int negative = *s == '-';
    if (*s == '+' || *s == '-')
        s++;
    char digits[15 + 3];
    Py_ssize_t count = 0;
    while (s < e && *s != '.')
        digits[count++] = *s++;
    if (s < e)
        s++; /* the decimal point */
    for (int i = 0; i < 3; i++)
        digits[count++] = s < e ? *s++ : '0';

    Py_ssize_t first = 0;
    while (first < count && digits[first] == '0')
        first++;
    if (first == count) {
        *out = '0';
        return 1;
    }
    char *start = out;
    if (negative)
        *out++ = '-';
    memcpy(out, digits + first, (size_t)(count - first));
    out += count - first;
    return out - start;
}

/* Write each line with the added label first in its label set, and its timestamp converted
 * when `stamp` marks one. */
static PyObject *
write_relabelled(const char *run, const Line *lines, Py_ssize_t count, const char *added,
                 Py_ssize_t added_length, int openmetrics)
{
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const Line *line = &lines[i];
        size += line->end - line->start + 1 + added_length;
        size += line->key_end == line->name_end ? 2 : 1; /* `{` and `}`, or `,` */
        size += line->stamp >= 0 ? 4 : 0;
    }
    PyObject *block = PyBytes_FromStringAndSize(NULL, size);
    if (block == NULL)
        return NULL;

    char *out = PyBytes_AS_STRING(block);
    for (Py_ssize_t i = 0; i < count; i++) {
        const Line *line = &lines[i];
        Py_ssize_t name_length = line->name_end - line->start;
        memcpy(out, run + line->start, (size_t)name_length);
        out += name_length;
        *out++ = '{';
        memcpy(out, added, (size_t)added_length);
        out += added_length;
        if (line->key_end == line->name_end) {
            *out++ = '}';
        }
        else {
            *out++ = ',';
            name_length++; /* the `{` is already written */
        }
        Py_ssize_t copied_end = line->stamp >= 0 ? line->stamp : line->end;
        Py_ssize_t rest = copied_end - line->start - name_length;
        memcpy(out, run + line->start + name_length, (size_t)rest);
        out += rest;
        if (line->stamp >= 0 && openmetrics)
            out += write_milliseconds(out, run + line->stamp, run + line->end);
        else if (line->stamp >= 0)
            out += write_seconds(out, run + line->stamp, run + line->end);
        *out++ = '\n';
    }

    Py_ssize_t written = out - PyBytes_AS_STRING(block);
    if (written != size && _PyBytes_Resize(&block, written) < 0)
        return NULL;
    return block;
}

static int
has_converted_stamps(const Line *lines, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        if (lines[i].stamp >= 0)
            return 1;
    }
    return 0;
}

/* Copy the lines unchanged, with a final newline. */
static PyObject *
write_unchanged(const char *run, Py_ssize_t size)
{
    Py_ssize_t missing = size > 0 && run[size - 1] == '\n' ? 0 : 1;
    PyObject *block = PyBytes_FromStringAndSize(NULL, size + missing);
    if (block == NULL)
        return NULL;
    memcpy(PyBytes_AS_STRING(block), run, (size_t)size);
    if (missing)
        PyBytes_AS_STRING(block)[size] = '\n';
    return block;
}

/* Relabel the run text[start:] into a block; set *block to NULL when the general reader must
 * read it. Return the line count, or -1 with an exception set. */
static Py_ssize_t
relabel(const char *text, Py_ssize_t start, Py_ssize_t size, Rules *rules, PyObject *added,
        LineBuffer *buffer, unsigned int *names_seen, Py_ssize_t *run_end, PyObject **block)
{
    *block = NULL;
    Py_ssize_t count = scan_run(text, start, size, rules, buffer, names_seen, run_end);
    if (count == -2)
        return -1;
    if (count <= 0)
        return 0;

    int repeated = has_repeats(text, buffer->lines, count);
    if (repeated < 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (repeated)
        return 0;
    if (added == Py_None && has_converted_stamps(buffer->lines, count))
        return 0; /* write_unchanged copies timestamps as they are */

    *block = added == Py_None
        ? write_unchanged(text + start, *run_end - start)
        : write_relabelled(text, buffer->lines, count, PyBytes_AS_STRING(added),
                           PyBytes_GET_SIZE(added), rules->openmetrics);
    return *block == NULL ? -1 : count;
}

PyDoc_STRVAR(relabel_run_doc,
"relabel_run(run, allowed, added_label, label_name, openmetrics, /)\n--\n\n"
"Check a run of sample lines of one family and add the label to each line.\n\n"
"Return (block, lines, mask) where mask has bit i set when allowed[i] occurs, or None\n"
"when a line is not canonical or a series repeats; then the general reader must read the\n"
"run. added_label is the whole `name=\"value\"` item, or None to add nothing.");

static PyObject *
relabel_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "relabel_run takes 5 arguments, got %zd", nargs);
        return NULL;
    }
    PyObject *run_object = args[0], *allowed = args[1], *added = args[2];
    if (!PyBytes_Check(run_object) || !PyTuple_Check(allowed) ||
        (added != Py_None && !PyBytes_Check(added))) {
        PyErr_SetString(PyExc_TypeError, "expected (bytes, tuple, bytes | None, ...)");
        return NULL;
    }
    int openmetrics = PyObject_IsTrue(args[4]);
    if (openmetrics < 0)
        return NULL;
    Rules rules;
    if (read_rules(&rules, allowed, added == Py_None ? Py_None : args[3], openmetrics) < 0)
        return NULL;

    const char *run = PyBytes_AS_STRING(run_object);
    Py_ssize_t size = PyBytes_GET_SIZE(run_object);
    LineBuffer buffer = {NULL, 0};
    unsigned int names_seen = 0;
    Py_ssize_t run_end = 0;
    PyObject *block = NULL;
    Py_ssize_t count = relabel(run, 0, size, &rules, added, &buffer, &names_seen, &run_end, &block);
    PyMem_Free(buffer.lines);
    if (count < 0)
        return NULL;
    if (block == NULL || run_end != size) {
        Py_XDECREF(block);
        Py_RETURN_NONE; /* a line needs the general reader, or the run contains a comment line */
    }
    return Py_BuildValue("(NnI)", block, count, names_seen);
}

PyDoc_STRVAR(series_keys_doc,
"series_keys(body, start, end, openmetrics, /)\n--\n\n"
"Return each line's series (name and label set, without the added label) of the run\n"
"body[start:end], which relabel_run or scan_body accepted. Raise ValueError for any other run.");

static PyObject *
series_keys(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "series_keys takes (bytes, int, int, bool)");
        return NULL;
    }
    Py_ssize_t start = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    Py_ssize_t end = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (PyErr_Occurred())
        return NULL;
    if (start < 0 || end < start || end > PyBytes_GET_SIZE(args[0])) {
        PyErr_Format(PyExc_ValueError, "invalid run [%zd, %zd) of a body of %zd bytes", start, end,
                     PyBytes_GET_SIZE(args[0]));
        return NULL;
    }
    int openmetrics = PyObject_IsTrue(args[3]);
    if (openmetrics < 0)
        return NULL;

    /* Any name that scans as a metric name is allowed here, because relabel_run checked the
     * run against its family already. */
    const char *run = PyBytes_AS_STRING(args[0]) + start;
    Py_ssize_t size = end - start;
    PyObject *keys = PyList_New(0);
    if (keys == NULL)
        return NULL;

    Rules rules = {
        .count = 1, .collect = 0, .clashing = NULL, .openmetrics = openmetrics, .converting = 0};
    Py_ssize_t position = 0;
    while (position < size) {
        const char *p = run + position;
        while (p < run + size && IS(*p, METRIC_REST))
            p++;
        rules.names[0] = run + position;
        rules.lengths[0] = p - (run + position);

        Line line;
        PyObject *key;
        if (scan_line(run, position, size, &rules, &line) < 0) {
            PyErr_SetString(PyExc_ValueError, "series_keys got a run relabel_run rejects");
            Py_DECREF(keys);
            return NULL;
        }
        key = PyBytes_FromStringAndSize(run + line.start, line.key_end - line.start);
        if (key == NULL || PyList_Append(keys, key) < 0) {
            Py_XDECREF(key);
            Py_DECREF(keys);
            return NULL;
        }
        Py_DECREF(key);
        position = line.end + 1;
    }
    return keys;
}

/* Relabel the run that starts at `start` and append (start, end, names, block, lines) to
 * `items`; names, block and lines are None, None and 0 when the general reader must read the
 * run. Return where the run ends, or -1 with an exception set. */
static Py_ssize_t
append_run(PyObject *items, PyObject *body, Py_ssize_t start, PyObject *added,
           PyObject *label_name, int openmetrics, int converting, LineBuffer *buffer)
{
    const char *text = PyBytes_AS_STRING(body);
    Rules rules = {.count = 0,
                   .collect = 1,
                   .clashing = NULL,
                   .openmetrics = openmetrics,
                   .converting = converting};
    if (added != Py_None) {
        rules.clashing = PyBytes_AS_STRING(label_name);
        rules.clashing_length = PyBytes_GET_SIZE(label_name);
    }

    unsigned int names_seen = 0;
    Py_ssize_t end = start;
    PyObject *block = NULL;
    Py_ssize_t count = relabel(text, start, PyBytes_GET_SIZE(body), &rules, added, buffer,
                               &names_seen, &end, &block);
    if (count < 0)
        return -1;

    PyObject *item = NULL;
    if (block == NULL) {
        item = Py_BuildValue("(nnOOn)", start, end, Py_None, Py_None, (Py_ssize_t)0);
    }
    else {
        PyObject *names = PyTuple_New(rules.count);
        for (int i = 0; names != NULL && i < rules.count; i++) {
            PyObject *name = PyBytes_FromStringAndSize(rules.names[i], rules.lengths[i]);
            if (name == NULL)
                Py_CLEAR(names);
            else
                PyTuple_SET_ITEM(names, i, name);
        }
        if (names != NULL)
            item = Py_BuildValue("(nnNNn)", start, end, names, block, count);
        else
            Py_DECREF(block);
    }
    if (item == NULL)
        return -1;
    int appended = PyList_Append(items, item);
    Py_DECREF(item);
    return appended < 0 ? -1 : end;
}

PyDoc_STRVAR(scan_body_doc,
"scan_body(body, added_label, label_name, openmetrics, converting, /)\n--\n\n"
"Split a body into comment lines and runs of other lines, and relabel each run.\n\n"
"Return a list with a bytes object for each line that starts with `#`, and a tuple\n"
"(start, end, names, block, lines) for each run body[start:end] between them: names lists\n"
"the run's distinct sample names in order of first use, and block its relabelled lines.\n"
"names and block are None when a line is not canonical or a series repeats, so that the\n"
"general reader must read the run. The caller checks that the names belong to one family.\n"
"converting is true when the output format differs from the body's; then lines with a\n"
"timestamp are left to the general reader too, because it converts them.");

static PyObject *
scan_body(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5 || !PyBytes_Check(args[0]) || (args[1] != Py_None && !PyBytes_Check(args[1])) ||
        !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "scan_body takes (bytes, bytes | None, bytes, bool, bool)");
        return NULL;
    }
    int openmetrics = PyObject_IsTrue(args[3]);
    if (openmetrics < 0)
        return NULL;
    int converting = PyObject_IsTrue(args[4]);
    if (converting < 0)
        return NULL;

    PyObject *body = args[0];
    const char *text = PyBytes_AS_STRING(body);
    Py_ssize_t size = PyBytes_GET_SIZE(body);
    PyObject *items = PyList_New(0);
    if (items == NULL)
        return NULL;

    LineBuffer buffer = {NULL, 0};
    Py_ssize_t position = 0;
    while (position < size) {
        /* A comment line ends at its newline, a run before the next line that starts with `#`. */
        Py_ssize_t end = position;
        if (text[position] == '#') {
            const char *newline = memchr(text + position, '\n', (size_t)(size - position));
            end = newline == NULL ? size : newline - text + 1;
            PyObject *line = PyBytes_FromStringAndSize(text + position, end - position);
            if (line == NULL || PyList_Append(items, line) < 0) {
                Py_XDECREF(line);
                PyMem_Free(buffer.lines);
                Py_DECREF(items);
                return NULL;
            }
            Py_DECREF(line);
            position = end;
            continue;
        }
        end = append_run(items, body, position, args[1], args[2], openmetrics, converting,
                         &buffer);
        if (end < 0) {
            PyMem_Free(buffer.lines);
            Py_DECREF(items);
            return NULL;
        }
        position = end;
    }
    PyMem_Free(buffer.lines);
    return items;
}

/* ---- The whole merge of canonical bodies ------------------------------------------------
 *
 * merge_bodies merges canonical bodies in one call, without a Python object per family or per
 * line. Each body is in the output format, or is text going into OpenMetrics. A canonical body
 * is a sequence of family blocks: the family's metadata lines, each exactly `# HELP name text`,
 * `# TYPE name type` or (OpenMetrics) `# UNIT name unit`, then its sample lines, each as
 * scan_line accepts it and named with one of the family's sample names. An OpenMetrics body
 * ends at `# EOF`. Any other line makes the call return the body's index, and so does a family
 * given twice, a sample name used by two families, or anything else the general path would
 * regroup or rename. merge.py then decides between leaving the body out and the general path.
 * Tests check with hypothesis that both paths write the same bytes.
 */

/* A family's type and the sample names it allows: the family name plus one of these suffixes. */
typedef struct {
    const char *name;
    const char *suffixes[4];
    int suffix_count;
} KindRule;

static const KindRule TEXT_KINDS[] = {
    {"counter", {""}, 1},
    {"gauge", {""}, 1},
    {"histogram", {"_bucket", "_sum", "_count"}, 3},
    {"summary", {"", "_sum", "_count"}, 3},
    {"untyped", {""}, 1},
};
#define TEXT_COUNTER 0
#define TEXT_UNTYPED 4

static const KindRule OPENMETRICS_KINDS[] = {
    {"counter", {"_total", "_created"}, 2},
    {"gauge", {""}, 1},
    {"histogram", {"_bucket", "_sum", "_count", "_created"}, 4},
    {"gaugehistogram", {"_bucket", "_gsum", "_gcount"}, 3},
    {"summary", {"", "_sum", "_count", "_created"}, 4},
    {"info", {"_info"}, 1},
    {"stateset", {""}, 1},
    {"unknown", {""}, 1},
};
#define OPENMETRICS_COUNTER 0
#define OPENMETRICS_UNKNOWN 7

/* One sample line, as offsets into its body. */
typedef struct {
    uint32_t start;
    uint32_t name_end;
    uint32_t key_end;
    uint32_t end; /* the newline, or the end of a body without a final newline */
    uint32_t stamp; /* the timestamp's first byte when it is converted, else NO_STAMP */
    uint8_t suffix; /* which of its family's sample names it has */
} SampleLine;

#define NO_STAMP UINT32_MAX

/* One family's block in one body. */
typedef struct {
    const char *name;
    Py_ssize_t name_length;
    int kind; /* in the body's format */
    const char *out_name; /* the family it joins in the output format, and its type there */
    Py_ssize_t out_name_length;
    int out_kind;
    const char *help; /* NULL when the block has no HELP line */
    Py_ssize_t help_length;
    const char *unit; /* NULL when the block has no UNIT line */
    Py_ssize_t unit_length;
    Py_ssize_t first; /* index of its first line in the line array */
    Py_ssize_t count; /* lines in the block, repeats included */
    Py_ssize_t kept;  /* lines written: the first of each series */
    Py_ssize_t bytes; /* what the kept lines take in the output, but for the added label */
    Py_ssize_t body;  /* which body */
    Py_ssize_t next;  /* the next block of the same merged family, or -1 */
    Py_ssize_t name_lines[4]; /* for each suffix, the first line that used it, or -1 */
    Py_ssize_t twin; /* the block of the body before whose series it repeats so far, or -1 */
} Block;

/* A family of the merged output, in the order its first sample arrived. */
typedef struct {
    const char *name;
    Py_ssize_t name_length;
    int kind;
    const char *help;
    Py_ssize_t help_length;
    const char *unit;
    Py_ssize_t unit_length;
    Py_ssize_t first_block;
    Py_ssize_t last_block;
    int help_reported;
    int unit_reported;
} Merged;

/* Growable arrays of the three records, and the line marks of repeated series. */
typedef struct {
    SampleLine *lines;
    Py_ssize_t line_count, line_capacity;
    unsigned char *dropped; /* 1 for a line whose series an earlier line of its block has */
    Block *blocks;
    Py_ssize_t block_count, block_capacity;
    Merged *merged;
    Py_ssize_t merged_count, merged_capacity;
} MergeState;

static int
grow(void **array, Py_ssize_t *capacity, size_t item_size)
{
    Py_ssize_t wanted = *capacity ? *capacity * 2 : 1024;
    void *grown = PyMem_Realloc(*array, (size_t)wanted * item_size);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *array = grown;
    *capacity = wanted;
    return 0;
}

/* Size the line records and their marks for `capacity` lines, up or down. Return -1 on no memory. */
static int
resize_lines(MergeState *state, Py_ssize_t capacity)
{
    if (capacity < 1)
        capacity = 1;
    SampleLine *lines = PyMem_Realloc(state->lines, (size_t)capacity * sizeof(SampleLine));
    if (lines == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    state->lines = lines;
    unsigned char *dropped = PyMem_Realloc(state->dropped, (size_t)capacity);
    if (dropped == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    state->dropped = dropped;
    state->line_capacity = capacity;
    return 0;
}

static void
free_state(MergeState *state)
{
    PyMem_Free(state->lines);
    PyMem_Free(state->dropped);
    PyMem_Free(state->blocks);
    PyMem_Free(state->merged);
}

/* Return the suffix index of `name` in the block's family, or -1 when it is not one of its
 * sample names. */
static int
match_sample(const Block *block, const KindRule *rule, const char *name, Py_ssize_t length)
{
    if (length < block->name_length || memcmp(name, block->name, (size_t)block->name_length) != 0)
        return -1;
    const char *tail = name + block->name_length;
    Py_ssize_t tail_length = length - block->name_length;
    for (int i = 0; i < rule->suffix_count; i++) {
        const char *suffix = rule->suffixes[i];
        if ((Py_ssize_t)strlen(suffix) == tail_length && memcmp(tail, suffix, (size_t)tail_length) == 0)
            return i;
    }
    return -1;
}

/* Read a legacy metric name at p; return its end, or NULL when there is none. */
static const char *
scan_metric_name(const char *p, const char *e)
{
    if (p >= e || !IS(*p, METRIC_START))
        return NULL;
    p++;
    while (p < e && IS(*p, METRIC_REST))
        p++;
    return p;
}

/* HELP text that the general reader writes back unchanged after unescaping and escaping it
 * again: no blank at either end, no carriage return, and only the escapes it writes, which are
 * \\ and \n, and in OpenMetrics \" with no bare quote. An empty text is written as empty. */
static int
is_plain_text(const char *s, const char *e, int openmetrics)
{
    if (s == e)
        return 1;
    if (*s == ' ' || *s == '\t' || e[-1] == ' ' || e[-1] == '\t')
        return 0;
    for (; s < e; s++) {
        if (*s == '\r' || (openmetrics && *s == '"'))
            return 0;
        if (*s == '\\') {
            if (e - s < 2 || (s[1] != '\\' && s[1] != 'n' && !(openmetrics && s[1] == '"')))
                return 0;
            s++;
        }
    }
    return 1;
}

/* Whether text HELP is written back unchanged in OpenMetrics: the general reader unescapes \\,
 * \n and \" and escapes all three again, so those may stand, but a bare quote may not. */
static int
is_plain_text_for_openmetrics(const char *s, const char *e)
{
    if (!is_plain_text(s, e, 0))
        return 0;
    for (; s < e; s++) {
        if (*s == '"')
            return 0;
        if (*s == '\\')
            s++;
    }
    return 1;
}

enum { META_NONE, META_HELP, META_TYPE, META_UNIT, META_EOF };

/* Read a canonical comment line s..e (without its newline): fill name and text and return its
 * META_ kind, or -1 when the general reader must read it. */
static int
scan_comment(const char *s, const char *e, int openmetrics, int converting, const char **name,
             Py_ssize_t *name_length, const char **text, Py_ssize_t *text_length)
{
    Py_ssize_t length = e - s;
    if (openmetrics && length == 5 && memcmp(s, "# EOF", 5) == 0)
        return META_EOF;
    if (length < 8 || memcmp(s, "# ", 2) != 0 || s[6] != ' ')
        return -1;
    int kind;
    if (memcmp(s + 2, "HELP", 4) == 0)
        kind = META_HELP;
    else if (memcmp(s + 2, "TYPE", 4) == 0)
        kind = META_TYPE;
    else if (openmetrics && memcmp(s + 2, "UNIT", 4) == 0)
        kind = META_UNIT;
    else
        return -1;

    const char *p = s + 7;
    const char *name_end = scan_metric_name(p, e);
    if (name_end == NULL)
        return -1;
    *name = p;
    *name_length = name_end - p;
    if (name_end == e) {
        if (kind != META_HELP)
            return -1;
        *text = name_end;
        *text_length = 0;
        return kind;
    }
    if (*name_end != ' ')
        return -1;
    *text = name_end + 1;
    *text_length = e - (name_end + 1);
    if (kind == META_HELP)
        return (converting ? is_plain_text_for_openmetrics(*text, e) : is_plain_text(*text, e, openmetrics))
            ? kind : -1;
    if (*text_length == 0)
        return -1;
    for (const char *t = *text; t < e; t++) {
        if (*t == ' ' || *t == '\t' || *t == '\r' || *t == '\\' || *t == '"')
            return -1;
    }
    return kind;
}

static int
find_kind(const KindRule *kinds, int kind_count, const char *s, Py_ssize_t length)
{
    for (int i = 0; i < kind_count; i++) {
        if ((Py_ssize_t)strlen(kinds[i].name) == length && memcmp(kinds[i].name, s, (size_t)length) == 0)
            return i;
    }
    return -1;
}

typedef struct {
    const char *text;
    Py_ssize_t length;
} Span;

static int
compare_spans(const void *a, const void *b)
{
    const Span *x = a, *y = b;
    if (x->length != y->length)
        return x->length < y->length ? -1 : 1;
    return memcmp(x->text, y->text, (size_t)x->length);
}

/* Whether two spans are equal; the array is sorted. */
static int
has_equal_neighbours(Span *spans, Py_ssize_t count)
{
    qsort(spans, (size_t)count, sizeof(Span), compare_spans);
    for (Py_ssize_t i = 1; i < count; i++) {
        if (compare_spans(&spans[i - 1], &spans[i]) == 0)
            return 1;
    }
    return 0;
}

/* Hash a series in two independent lanes of 8 bytes, so that the multiplications overlap. */
static uint64_t
hash_series(const char *s, Py_ssize_t n)
{
    Py_ssize_t length = n;
    uint64_t a = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n, b = 0x632be59bd9b4e019ULL;
    for (; n >= 16; s += 16, n -= 16) {
        a = (a ^ load_word(s)) * 0xff51afd7ed558ccdULL;
        b = (b ^ load_word(s + 8)) * 0xc4ceb9fe1a85ec53ULL;
        a ^= a >> 31;
        b ^= b >> 29;
    }
    if (n >= 8) {
        a = (a ^ load_word(s)) * 0xff51afd7ed558ccdULL;
        a ^= a >> 31;
        s += 8;
        n -= 8;
    }
    /* The last bytes: a word that ends at the end when the series is long enough, which
     * rehashes a few bytes but avoids a copy through memory. */
    uint64_t tail = 0;
    if (n > 0 && length >= 8) {
        tail = load_word(s + n - 8);
    }
    else {
        for (Py_ssize_t i = 0; i < n; i++)
            tail |= (uint64_t)(unsigned char)s[i] << (8 * i);
    }
    b = (b ^ tail) * 0xc4ceb9fe1a85ec53ULL;
    uint64_t hash = (a ^ (b >> 17) ^ (b << 47)) * 0x9e3779b97f4a7c15ULL;
    return hash ^ (hash >> 32);
}

/* A slot of the repeat table: a line and its series' hash. */
typedef struct {
    Py_ssize_t line;
    uint64_t hash;
} SeriesSlot;

/* Why a line is not written; lines with no mark are. */
enum { REPEAT = 1, FILTERED = 2 };

/* Mark the lines of a block whose series an earlier line of the block has; the general reader
 * keeps the first. Return -1 on no memory. */
static int
drop_repeats(MergeState *state, const char *text, Block *block, SeriesSlot **table, size_t *table_slots)
{
    const Block *twin = block->twin >= 0 ? &state->blocks[block->twin] : NULL;
    if (twin != NULL && twin->count == block->count) {
        /* The same series in the same order as its twin: the same lines are repeats. */
        for (Py_ssize_t i = 0; i < block->count; i++)
            state->dropped[block->first + i] = state->dropped[twin->first + i] & REPEAT;
        return 0;
    }
    if (block->count < 2)
        return 0;

    size_t slots = 16;
    while (slots < (size_t)block->count * 2)
        slots <<= 1;
    if (slots > *table_slots) {
        SeriesSlot *grown = PyMem_Realloc(*table, slots * sizeof(SeriesSlot));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        *table = grown;
        *table_slots = slots;
    }
    memset(*table, 0xff, slots * sizeof(SeriesSlot)); /* line -1: an empty slot */

    for (Py_ssize_t i = block->first; i < block->first + block->count; i++) {
        const SampleLine *line = &state->lines[i];
        Py_ssize_t length = line->key_end - line->start;
        uint64_t hash = hash_series(text + line->start, length);
        size_t slot = (size_t)hash & (slots - 1);
        for (;;) {
            SeriesSlot *entry = &(*table)[slot];
            if (entry->line < 0) {
                entry->line = i;
                entry->hash = hash;
                break;
            }
            const SampleLine *other = &state->lines[entry->line];
            if (entry->hash == hash && other->key_end - other->start == length &&
                same_bytes(text + other->start, text + line->start, length)) {
                state->dropped[i] = REPEAT;
                break;
            }
            slot = (slot + 1) & (slots - 1);
        }
    }
    return 0;
}

/* Mark the lines whose sample name the series filter drops. The filter of a whole merge
 * depends only on the sample name and the added label, so it is asked once per name of a
 * block. Return -1 with an exception set when it raises. */
static int
filter_names(MergeState *state, const char *text, Block *block, Py_ssize_t body_index, PyObject *keep)
{
    for (int suffix = 0; suffix < 4; suffix++) {
        Py_ssize_t index = block->name_lines[suffix];
        if (index < 0)
            continue;
        const SampleLine *first = &state->lines[index];
        PyObject *verdict = PyObject_CallFunction(keep, "y#n", text + first->start,
                                                  (Py_ssize_t)(first->name_end - first->start),
                                                  body_index);
        if (verdict == NULL)
            return -1;
        int kept = PyObject_IsTrue(verdict);
        Py_DECREF(verdict);
        if (kept < 0)
            return -1;
        if (kept)
            continue;
        for (Py_ssize_t i = index; i < block->first + block->count; i++) {
            if (state->lines[i].suffix == suffix)
                state->dropped[i] |= FILTERED;
        }
    }
    return 0;
}

/* Count what a block writes: its unmarked lines and their bytes, converted timestamps included. */
static void
tally_block(const MergeState *state, const char *text, Block *block)
{
    block->kept = 0;
    block->bytes = 0;
    for (Py_ssize_t i = block->first; i < block->first + block->count; i++) {
        if (state->dropped[i])
            continue;
        const SampleLine *line = &state->lines[i];
        block->kept++;
        block->bytes += line->end - line->start + (line->key_end == line->name_end ? 3 : 2);
        if (line->stamp != NO_STAMP) {
            /* The exact length of the seconds, so the merged size is known before writing. */
            char seconds[MAX_TIMESTAMP_LENGTH + 8];
            Py_ssize_t length = write_seconds(seconds, text + line->stamp, text + line->end);
            block->bytes += length - (Py_ssize_t)(line->end - line->stamp);
        }
    }
}

/* The body before, whose lines a body of the same program repeats series for series. */
typedef struct {
    const char *text;
    Py_ssize_t first_block;
    Py_ssize_t block_end;
} Reference;

/* Set the family a block joins in the output. A text body converted to OpenMetrics keeps its
 * sample names, but a counter family loses the _total of its name, or becomes unknown when it
 * has none, as formats.output_family maps it. */
static void
set_output_family(Block *block, int converting)
{
    block->out_name = block->name;
    block->out_name_length = block->name_length;
    block->out_kind = block->kind;
    if (!converting)
        return;

    if (block->kind == TEXT_COUNTER) {
        Py_ssize_t length = block->name_length;
        if (length > 6 && memcmp(block->name + length - 6, "_total", 6) == 0) {
            block->out_name_length = length - 6;
            block->out_kind = OPENMETRICS_COUNTER;
        }
        else {
            block->out_kind = OPENMETRICS_UNKNOWN;
        }
        return;
    }
    if (block->kind == TEXT_UNTYPED) {
        block->out_kind = OPENMETRICS_UNKNOWN;
        return;
    }
    const char *kind = TEXT_KINDS[block->kind].name;
    block->out_kind = find_kind(OPENMETRICS_KINDS, 8, kind, (Py_ssize_t)strlen(kind));
}

/* Return the block of the reference body at the same place as this one when it is the same
 * family with the same type, or -1. */
static Py_ssize_t
find_twin(const MergeState *state, const Reference *reference, const Block *block, Py_ssize_t place)
{
    if (reference == NULL)
        return -1;
    Py_ssize_t twin = reference->first_block + place;
    if (twin >= reference->block_end)
        return -1;
    const Block *other = &state->blocks[twin];
    if (other->kind != block->kind || other->name_length != block->name_length ||
        !same_bytes(other->name, block->name, block->name_length))
        return -1;
    return twin;
}

/* Split one body into blocks and lines. Return 1 when it is canonical, 0 when it is not, and
 * -1 with an exception set. */
static int
read_canonical(MergeState *state, Py_ssize_t body_index, const char *text, Py_ssize_t size,
               int openmetrics, int converting, const char *label_name, Py_ssize_t label_name_length,
               const Reference *reference, PyObject *keep, SeriesSlot **table, size_t *table_slots,
               int *wide)
{
    const KindRule *kinds = openmetrics ? OPENMETRICS_KINDS : TEXT_KINDS;
    int kind_count = openmetrics ? 8 : 5;
    int untyped = openmetrics ? OPENMETRICS_UNKNOWN : TEXT_UNTYPED;
    if (size >= (Py_ssize_t)UINT32_MAX)
        return 0;

    Rules rules = {.count = 0,
                   .collect = 0,
                   .clashing = label_name,
                   .clashing_length = label_name_length,
                   .openmetrics = openmetrics,
                   .converting = converting};
    Py_ssize_t first_block = state->block_count;
    Block *block = NULL;
    int finished = 0;
    Py_ssize_t position = 0;
    /* The sample name of the line before, and its suffix, which most lines repeat. */
    const char *last_name = NULL;
    Py_ssize_t last_length = 0;
    int last_suffix = -1;

    while (position < size) {
        if (text[position] == '\n') {
            position++; /* the general reader skips an empty line */
            continue;
        }
        if (text[position] == '#') {
            const char *newline = memchr(text + position, '\n', (size_t)(size - position));
            Py_ssize_t end = newline == NULL ? size : newline - text;
            const char *name, *meta;
            Py_ssize_t name_length, meta_length;
            int meta_kind = scan_comment(text + position, text + end, openmetrics, converting, &name,
                                         &name_length, &meta, &meta_length);
            if (meta_kind < 0)
                return 0;
            if (meta_kind == META_EOF) {
                finished = 1;
                if (end + 1 < size)
                    rules.wide = 1; /* the general reader checks the bytes after it too */
                break;
            }
            position = end + 1;
            for (const char *t = meta; t < meta + meta_length; t++)
                rules.wide |= (unsigned char)*t & 0x80;

            /* A metadata line opens a new block unless it names the open one, which has no
             * sample yet. */
            if (block == NULL || block->count > 0 || block->name_length != name_length ||
                memcmp(block->name, name, (size_t)name_length) != 0) {
                if (state->block_count == state->block_capacity &&
                    grow((void **)&state->blocks, &state->block_capacity, sizeof(Block)) < 0)
                    return -1;
                block = &state->blocks[state->block_count++];
                *block = (Block){.name = name, .name_length = name_length, .kind = -1, .help = NULL,
                                 .unit = NULL, .first = state->line_count, .count = 0,
                                 .body = body_index, .next = -1,
                                 .name_lines = {-1, -1, -1, -1}, .twin = -1};
                last_name = NULL;
            }
            if (meta_kind == META_TYPE) {
                if (block->kind >= 0)
                    return 0;
                block->kind = find_kind(kinds, kind_count, meta, meta_length);
                if (block->kind < 0)
                    return 0; /* the general reader reports the unknown type */
            }
            else if (meta_kind == META_HELP) {
                if (block->help != NULL)
                    return 0;
                block->help = meta;
                block->help_length = meta_length;
            }
            else {
                if (block->unit != NULL)
                    return 0;
                block->unit = meta;
                block->unit_length = meta_length;
            }
            continue;
        }

        if (block == NULL)
            return 0;
        if (block->kind < 0)
            block->kind = untyped;
        if (block->count == 0) {
            set_output_family(block, converting);
            block->twin = find_twin(state, reference, block, block - state->blocks - first_block);
        }
        if (state->line_count == state->line_capacity &&
            resize_lines(state, state->line_capacity ? state->line_capacity * 2 : 1024) < 0)
            return -1;

        /* Replicas of one program write the same series in the same order. So a line whose
         * series has the bytes of the line at its place in the twin block, checked already,
         * needs only its value and timestamp checked. */
        const char *p = text + position, *e = text + size;
        Line line;
        line.start = position;
        const char *name_end;
        int suffix;
        const SampleLine *model = NULL;
        if (block->twin >= 0) {
            const Block *twin = &state->blocks[block->twin];
            if (block->count < twin->count) {
                model = &state->lines[twin->first + block->count];
                Py_ssize_t length = model->key_end - model->start;
                if (e - p > length && p[length] == ' ' &&
                    same_bytes(p, reference->text + model->start, length)) {
                    line.name_end = position + (model->name_end - model->start);
                    line.key_end = position + length;
                }
                else {
                    model = NULL;
                }
            }
            if (model == NULL)
                block->twin = -1;
        }

        if (model != NULL) {
            name_end = text + line.name_end;
            suffix = model->suffix;
            if (scan_tail(text, text + line.key_end, e, &rules, &line) < 0)
                return 0;
        }
        /* Else the sample name, matched against the block's family; then the rest of the line.
         * Most lines repeat the name of the line before, which was checked already, so
         * comparing words with it checks the name too. */
        else if (last_name != NULL && e - p > last_length && same_bytes(p, last_name, last_length) &&
            !IS(p[last_length], METRIC_REST)) {
            name_end = p + last_length;
            suffix = last_suffix;
        }
        else {
            name_end = scan_metric_name(p, e);
            if (name_end == NULL)
                return 0;
            suffix = match_sample(block, &kinds[block->kind], p, name_end - p);
            if (suffix < 0)
                return 0;
            last_name = p;
            last_length = name_end - p;
            last_suffix = suffix;
        }
        if (model == NULL && scan_rest(text, name_end, e, &rules, &line) < 0)
            return 0;
        if (block->name_lines[suffix] < 0)
            block->name_lines[suffix] = state->line_count;
        SampleLine *sample = &state->lines[state->line_count];
        sample->start = (uint32_t)line.start;
        sample->name_end = (uint32_t)line.name_end;
        sample->key_end = (uint32_t)line.key_end;
        sample->end = (uint32_t)line.end;
        sample->stamp = line.stamp >= 0 ? (uint32_t)line.stamp : NO_STAMP;
        sample->suffix = (uint8_t)suffix;
        state->dropped[state->line_count] = 0;
        state->line_count++;
        block->count++;
        position = line.end + 1;
    }
    if (openmetrics && !finished)
        return 0; /* the general reader reports the missing # EOF */

    /* A family given twice, or a sample name used by two families, is regrouped or dropped as
     * a repeat by the general reader. */
    Py_ssize_t block_total = state->block_count - first_block;
    Span *spans = PyMem_Malloc((size_t)(block_total * 4 + 1) * sizeof(Span));
    if (spans == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t span_count = 0;
    for (Py_ssize_t i = first_block; i < state->block_count; i++)
        spans[span_count++] = (Span){state->blocks[i].name, state->blocks[i].name_length};
    int repeated = has_equal_neighbours(spans, span_count);
    span_count = 0;
    for (Py_ssize_t i = first_block; i < state->block_count && !repeated; i++) {
        for (int s = 0; s < 4; s++) {
            Py_ssize_t index = state->blocks[i].name_lines[s];
            if (index >= 0) {
                const SampleLine *line = &state->lines[index];
                spans[span_count++] = (Span){text + line->start, line->name_end - line->start};
            }
        }
    }
    if (!repeated)
        repeated = has_equal_neighbours(spans, span_count);
    PyMem_Free(spans);
    if (repeated)
        return 0;

    for (Py_ssize_t i = first_block; i < state->block_count; i++) {
        Block *each = &state->blocks[i];
        if (drop_repeats(state, text, each, table, table_slots) < 0)
            return -1;
        if (keep != Py_None && filter_names(state, text, each, body_index, keep) < 0)
            return -1;
        tally_block(state, text, each);
    }
    *wide = rules.wide != 0;
    return 1;
}

/* A table of merged families by name: open addressing over indexes into state->merged. */
typedef struct {
    Py_ssize_t *slots;
    size_t size;
} FamilyTable;

static int
table_insert(FamilyTable *table, MergeState *state, Py_ssize_t index);

static int
table_grow(FamilyTable *table, MergeState *state)
{
    size_t size = table->size ? table->size * 2 : 256;
    Py_ssize_t *slots = PyMem_Malloc(size * sizeof(Py_ssize_t));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(slots, 0xff, size * sizeof(Py_ssize_t));
    PyMem_Free(table->slots);
    table->slots = slots;
    table->size = size;
    for (Py_ssize_t i = 0; i < state->merged_count; i++) {
        if (table_insert(table, state, i) < 0)
            return -1;
    }
    return 0;
}

static int
table_insert(FamilyTable *table, MergeState *state, Py_ssize_t index)
{
    const Merged *family = &state->merged[index];
    size_t slot = (size_t)hash_bytes(family->name, family->name_length) & (table->size - 1);
    while (table->slots[slot] >= 0)
        slot = (slot + 1) & (table->size - 1);
    table->slots[slot] = index;
    return 0;
}

static Py_ssize_t
table_find(const FamilyTable *table, const MergeState *state, const char *name, Py_ssize_t length)
{
    size_t slot = (size_t)hash_bytes(name, length) & (table->size - 1);
    for (;;) {
        Py_ssize_t index = table->slots[slot];
        if (index < 0)
            return -1;
        const Merged *family = &state->merged[index];
        if (family->name_length == length && memcmp(family->name, name, (size_t)length) == 0)
            return index;
        slot = (slot + 1) & (table->size - 1);
    }
}

/* Append (family, "help" or "unit") to the conflicts list. */
static int
report_conflict(PyObject *conflicts, const Merged *family, const char *kind)
{
    PyObject *item = Py_BuildValue("(y#s)", family->name, family->name_length, kind);
    if (item == NULL)
        return -1;
    int appended = PyList_Append(conflicts, item);
    Py_DECREF(item);
    return appended;
}

static int
same_text(const char *a, Py_ssize_t a_length, const char *b, Py_ssize_t b_length)
{
    return a_length == b_length && memcmp(a, b, (size_t)a_length) == 0;
}

/* Join each block to its merged family, as merge.py's MergedExposition.add does: the first
 * block sets the type and the first HELP and UNIT win. Return 1, 0 when two bodies disagree on
 * a type (the general path settles that), or -1 with an exception set. */
static int
join_blocks(MergeState *state, PyObject *conflicts)
{
    FamilyTable table = {NULL, 0};
    int result = 1;
    for (Py_ssize_t b = 0; b < state->block_count && result == 1; b++) {
        Block *block = &state->blocks[b];
        if (block->kept == 0)
            continue; /* a family without samples claims nothing, as in merge.py */
        if ((size_t)(state->merged_count + 1) * 2 > table.size && table_grow(&table, state) < 0) {
            result = -1;
            break;
        }
        Py_ssize_t index = table_find(&table, state, block->out_name, block->out_name_length);
        if (index < 0) {
            if (state->merged_count == state->merged_capacity &&
                grow((void **)&state->merged, &state->merged_capacity, sizeof(Merged)) < 0) {
                result = -1;
                break;
            }
            index = state->merged_count++;
            state->merged[index] = (Merged){
                .name = block->out_name, .name_length = block->out_name_length, .kind = block->out_kind,
                .help = block->help, .help_length = block->help_length, .unit = block->unit,
                .unit_length = block->unit_length, .first_block = b, .last_block = b};
            table_insert(&table, state, index);
            continue;
        }

        Merged *family = &state->merged[index];
        if (family->kind != block->out_kind) {
            result = 0;
            break;
        }
        state->blocks[family->last_block].next = b;
        family->last_block = b;
        if (block->help != NULL) {
            if (family->help == NULL) {
                family->help = block->help;
                family->help_length = block->help_length;
            }
            else if (!family->help_reported &&
                     !same_text(family->help, family->help_length, block->help, block->help_length)) {
                family->help_reported = 1;
                if (report_conflict(conflicts, family, "help") < 0)
                    result = -1;
            }
        }
        if (block->unit != NULL && result == 1) {
            if (family->unit == NULL) {
                family->unit = block->unit;
                family->unit_length = block->unit_length;
            }
            else if (!family->unit_reported &&
                     !same_text(family->unit, family->unit_length, block->unit, block->unit_length)) {
                family->unit_reported = 1;
                if (report_conflict(conflicts, family, "unit") < 0)
                    result = -1;
            }
        }
    }
    PyMem_Free(table.slots);
    return result;
}

static char *
write_metadata(char *out, const char *keyword, const Merged *family, const char *text, Py_ssize_t length)
{
    memcpy(out, keyword, 7); /* "# HELP ", "# TYPE " or "# UNIT " */
    out += 7;
    memcpy(out, family->name, (size_t)family->name_length);
    out += family->name_length;
    *out++ = ' ';
    memcpy(out, text, (size_t)length);
    out += length;
    *out++ = '\n';
    return out;
}

/* Copy n bytes to out and return the byte after them. Most pieces of a line are shorter than
 * 32 bytes, which two overlapping 16-byte moves copy without a call to memcpy. */
static inline char *
put(char *out, const char *s, Py_ssize_t n)
{
#if defined(__SSE2__)
    if (n >= 16 && n <= 32) {
        __m128i head = _mm_loadu_si128((const __m128i *)(const void *)s);
        __m128i tail = _mm_loadu_si128((const __m128i *)(const void *)(s + n - 16));
        _mm_storeu_si128((__m128i *)(void *)out, head);
        _mm_storeu_si128((__m128i *)(void *)(out + n - 16), tail);
        return out + n;
    }
#endif
    if (n >= 8 && n < 16) {
        uint64_t head = load_word(s), tail = load_word(s + n - 8);
        memcpy(out, &head, 8);
        memcpy(out + n - 8, &tail, 8);
        return out + n;
    }
    memcpy(out, s, (size_t)n);
    return out + n;
}

/* A sample line as the merged exposition writes it: the merge's SampleLine in half the room,
 * with its repeat mark. While a 20 MB response is sent, the records of its 160,000 lines take
 * 1.9 MB instead of 4 MB. */
typedef struct {
    uint32_t start;
    uint32_t length; /* to the newline, or to the end of a body without a final newline */
    uint32_t name;   /* the metric name's length in the low NAME_BITS, WRITE_* flags above */
} WrittenLine;

#define NAME_BITS 24
#define NAME_MASK ((1u << NAME_BITS) - 1)
#define WRITE_LABELS (1u << NAME_BITS)       /* the line has a label set */
#define WRITE_STAMP (1u << (NAME_BITS + 1))  /* its timestamp is converted to seconds */
#define WRITE_SKIP (1u << (NAME_BITS + 2))   /* a repeat or filtered out: not written */

/* Turn the merge's line records into WrittenLines, in place, and give back the room saved.
 * Return -1 on no memory, 1 when done, or 0 with `*refused` set to the body of a line whose
 * name is too long to record, for the general reader. */
static int
compact_lines(MergeState *state, WrittenLine **written, Py_ssize_t *refused)
{
    /* Each record is copied out before its room is reused: record i is written at 12 i, which
     * ends before record i's own start at 24 i, so only records already read are overwritten. */
    char *room = (char *)state->lines;
    for (Py_ssize_t b = 0; b < state->block_count; b++) {
        const Block *block = &state->blocks[b];
        for (Py_ssize_t i = block->first; i < block->first + block->count; i++) {
            SampleLine line;
            memcpy(&line, room + i * (Py_ssize_t)sizeof(SampleLine), sizeof line);
            uint32_t name_length = line.name_end - line.start;
            if (name_length > NAME_MASK) {
                *refused = block->body;
                return 0;
            }
            WrittenLine out = {
                .start = line.start,
                .length = line.end - line.start,
                .name = name_length | (line.key_end != line.name_end ? WRITE_LABELS : 0) |
                        (line.stamp != NO_STAMP ? WRITE_STAMP : 0) |
                        (state->dropped[i] ? WRITE_SKIP : 0),
            };
            memcpy(room + i * (Py_ssize_t)sizeof(WrittenLine), &out, sizeof out);
        }
    }

    size_t size = (size_t)(state->line_count > 0 ? state->line_count : 1) * sizeof(WrittenLine);
    WrittenLine *shrunk = PyMem_Realloc(room, size);
    if (shrunk == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *written = shrunk;
    state->lines = NULL;
    state->line_capacity = 0;
    PyMem_Free(state->dropped);
    state->dropped = NULL;
    return 1;
}

/* The merged exposition, kept as the kernel's records and written on demand: whole, or in
 * slices, so that a server can compress and send it without holding it whole. It keeps the
 * bodies and the added labels alive, since its lines point into them. */
typedef struct {
    PyObject_HEAD
    MergeState state;       /* but for its line records, which are in `written` */
    WrittenLine *written;
    PyObject *bodies;       /* tuple of bytes */
    PyObject *added_labels; /* tuple of bytes */
    const char **texts;     /* each body's bytes */
    const char **labels;    /* each body's added label item, and its length */
    Py_ssize_t *label_lengths;
    int openmetrics;
    int eof;                /* OpenMetrics output ends in # EOF */
    Py_ssize_t size;        /* bytes it writes in all */
} ExpositionObject;

/* The position of a writer in an exposition. */
typedef struct {
    Py_ssize_t family;  /* index into state.merged; merged_count once all are written */
    int metadata_done;  /* the family's HELP, TYPE and UNIT are written */
    Py_ssize_t block;   /* the block being written, or -1 */
    Py_ssize_t line;    /* the next line of that block */
    int eof_done;
} Cursor;


static Py_ssize_t
metadata_size(const ExpositionObject *self, const Merged *family)
{
    const KindRule *kinds = self->openmetrics ? OPENMETRICS_KINDS : TEXT_KINDS;
    Py_ssize_t size = 9 + family->name_length + (Py_ssize_t)strlen(kinds[family->kind].name);
    if (family->help != NULL)
        size += 9 + family->name_length + family->help_length;
    if (self->openmetrics && family->unit != NULL)
        size += 9 + family->name_length + family->unit_length;
    return size;
}

static Py_ssize_t
exposition_size(const ExpositionObject *self)
{
    const MergeState *state = &self->state;
    Py_ssize_t size = self->openmetrics && self->eof ? 6 : 0; /* "# EOF\n" */
    for (Py_ssize_t m = 0; m < state->merged_count; m++) {
        const Merged *family = &state->merged[m];
        size += metadata_size(self, family);
        for (Py_ssize_t b = family->first_block; b >= 0; b = state->blocks[b].next) {
            const Block *block = &state->blocks[b];
            size += block->bytes + block->kept * self->label_lengths[block->body];
        }
    }
    return size;
}

/* Return the maximum size of a written sample line: the line, the added label, `{` and `}`
 * or `,`, a newline, and up to 4 more digits of a converted timestamp. */
static inline Py_ssize_t
line_bound(const WrittenLine *line, Py_ssize_t label_length)
{
    return (Py_ssize_t)line->length + 3 + label_length + (line->name & WRITE_STAMP ? 4 : 0);
}

static inline char *
write_line(char *out, const WrittenLine *line, const char *text, const char *label, Py_ssize_t label_length)
{
    const char *p = text + line->start;
    Py_ssize_t length = line->length;
    Py_ssize_t name_length = line->name & NAME_MASK;
    out = put(out, p, name_length);
    *out++ = '{';
    out = put(out, label, label_length);
    if (line->name & WRITE_LABELS) {
        *out++ = ',';
        name_length++; /* the `{` is already written */
    }
    else {
        *out++ = '}';
    }
    if (line->name & WRITE_STAMP) {
        /* The timestamp is the line's last token, after its last blank. */
        Py_ssize_t stamp = length;
        while (p[stamp - 1] != ' ')
            stamp--;
        out = put(out, p + name_length, stamp - name_length);
        out += write_seconds(out, p + stamp, p + length);
    }
    else {
        out = put(out, p + name_length, length - name_length);
    }
    *out++ = '\n';
    return out;
}

/* Move the cursor to the next piece to write, past dropped lines and spent blocks. Return the
 * maximum size of that piece, or 0 when everything is written. */
static Py_ssize_t
settle(const ExpositionObject *self, Cursor *cursor)
{
    const MergeState *state = &self->state;
    while (cursor->family < state->merged_count) {
        const Merged *family = &state->merged[cursor->family];
        if (!cursor->metadata_done)
            return metadata_size(self, family);
        while (cursor->block >= 0) {
            const Block *block = &state->blocks[cursor->block];
            while (cursor->line < block->first + block->count &&
                   self->written[cursor->line].name & WRITE_SKIP)
                cursor->line++;
            if (cursor->line < block->first + block->count) {
                const WrittenLine *line = &self->written[cursor->line];
                return line_bound(line, self->label_lengths[block->body]);
            }
            cursor->block = block->next;
            if (cursor->block >= 0)
                cursor->line = state->blocks[cursor->block].first;
        }
        cursor->family++;
        cursor->metadata_done = 0;
    }
    if (self->openmetrics && self->eof && !cursor->eof_done)
        return 6;
    return 0;
}

/* Write the piece at the cursor, which settle found, and move past it. */
static char *
write_piece(const ExpositionObject *self, Cursor *cursor, char *out)
{
    const MergeState *state = &self->state;
    if (cursor->family >= state->merged_count) {
        memcpy(out, "# EOF\n", 6);
        cursor->eof_done = 1;
        return out + 6;
    }

    const Merged *family = &state->merged[cursor->family];
    if (!cursor->metadata_done) {
        const KindRule *kinds = self->openmetrics ? OPENMETRICS_KINDS : TEXT_KINDS;
        if (family->help != NULL)
            out = write_metadata(out, "# HELP ", family, family->help, family->help_length);
        const char *kind = kinds[family->kind].name;
        out = write_metadata(out, "# TYPE ", family, kind, (Py_ssize_t)strlen(kind));
        if (self->openmetrics && family->unit != NULL)
            out = write_metadata(out, "# UNIT ", family, family->unit, family->unit_length);
        cursor->metadata_done = 1;
        cursor->block = family->first_block;
        cursor->line = state->blocks[family->first_block].first;
        return out;
    }

    /* One sample line, with the added label first in its label set. */
    const Block *block = &state->blocks[cursor->block];
    const WrittenLine *line = &self->written[cursor->line++];
    return write_line(out, line, self->texts[block->body], self->labels[block->body],
                      self->label_lengths[block->body]);
}

/* Write whole pieces from the cursor into a new bytes object of at most `limit` bytes, or of
 * one piece when that alone is larger. Return NULL with StopIteration unset at the end. */
static PyObject *
write_slice(const ExpositionObject *self, Cursor *cursor, Py_ssize_t limit)
{
    Py_ssize_t next = settle(self, cursor);
    if (next == 0)
        return NULL;
    Py_ssize_t room = next > limit ? next : limit;
    PyObject *slice = PyBytes_FromStringAndSize(NULL, room);
    if (slice == NULL)
        return NULL;
    char *start = PyBytes_AS_STRING(slice), *out = start, *end = start + room;
    while (next > 0 && next <= end - out) {
        if (cursor->family < self->state.merged_count && cursor->metadata_done) {
            /* The lines of the cursor's block, in a tight loop: most of the writing. */
            const Block *block = &self->state.blocks[cursor->block];
            const char *text = self->texts[block->body], *label = self->labels[block->body];
            Py_ssize_t label_length = self->label_lengths[block->body];
            Py_ssize_t last = block->first + block->count;
            for (; cursor->line < last; cursor->line++) {
                const WrittenLine *line = &self->written[cursor->line];
                if (line->name & WRITE_SKIP)
                    continue;
                if (line_bound(line, label_length) > end - out)
                    break;
                out = write_line(out, line, text, label, label_length);
            }
        }
        else {
            out = write_piece(self, cursor, out);
        }
        next = settle(self, cursor);
    }
    if (_PyBytes_Resize(&slice, out - start) < 0)
        return NULL;
    return slice;
}

static void
exposition_dealloc(ExpositionObject *self)
{
    free_state(&self->state);
    PyMem_Free(self->written);
    PyMem_Free(self->texts);
    PyMem_Free(self->labels);
    PyMem_Free(self->label_lengths);
    Py_XDECREF(self->bodies);
    Py_XDECREF(self->added_labels);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
exposition_length(ExpositionObject *self)
{
    return self->size;
}

PyDoc_STRVAR(tobytes_doc, "tobytes()\n--\n\nWrite the whole exposition into one bytes object.");

static PyObject *
exposition_tobytes(ExpositionObject *self, PyObject *unused)
{
    (void)unused;
    Cursor cursor = {0, 0, -1, 0, 0};
    if (self->size == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    /* settle() gives each piece's maximum size, up to 5 bytes more than it writes, hence the room. */
    PyObject *whole = write_slice(self, &cursor, self->size + 8);
    if (whole == NULL && !PyErr_Occurred())
        return PyBytes_FromStringAndSize(NULL, 0);
    if (whole != NULL && PyBytes_GET_SIZE(whole) != self->size) {
        Py_DECREF(whole);
        PyErr_SetString(PyExc_SystemError, "the exposition wrote another size than it computed");
        return NULL;
    }
    return whole;
}

/* An iterator over slices of an exposition. */
typedef struct {
    PyObject_HEAD
    ExpositionObject *exposition;
    Cursor cursor;
    Py_ssize_t limit;
} SlicesObject;

static void
slices_dealloc(SlicesObject *self)
{
    Py_XDECREF(self->exposition);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
slices_next(SlicesObject *self)
{
    return write_slice(self->exposition, &self->cursor, self->limit);
}

static PyTypeObject SlicesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lsif_agg.exposition._relabel.Slices",
    .tp_basicsize = sizeof(SlicesObject),
    .tp_dealloc = (destructor)slices_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Slices of a merged exposition, each of whole lines.",
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)slices_next,
};

PyDoc_STRVAR(slices_doc,
"slices(limit, /)\n--\n\n"
"Return an iterator over the exposition in bytes objects of whole lines, each at most limit\n"
"bytes unless one line alone is longer. Several iterators may run at once.");

static PyObject *
exposition_slices(ExpositionObject *self, PyObject *argument)
{
    Py_ssize_t limit = PyNumber_AsSsize_t(argument, PyExc_OverflowError);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (limit < 1) {
        PyErr_Format(PyExc_ValueError, "slices needs a limit of at least 1 byte, got %zd", limit);
        return NULL;
    }
    SlicesObject *slices = PyObject_New(SlicesObject, &SlicesType);
    if (slices == NULL)
        return NULL;
    Py_INCREF(self);
    slices->exposition = self;
    slices->cursor = (Cursor){0, 0, -1, 0, 0};
    slices->limit = limit;
    return (PyObject *)slices;
}

static PyMethodDef exposition_methods[] = {
    {"tobytes", (PyCFunction)exposition_tobytes, METH_NOARGS, tobytes_doc},
    {"slices", (PyCFunction)exposition_slices, METH_O, slices_doc},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods exposition_as_sequence = {
    .sq_length = (lenfunc)exposition_length,
};

static PyTypeObject ExpositionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lsif_agg.exposition._relabel.Exposition",
    .tp_basicsize = sizeof(ExpositionObject),
    .tp_dealloc = (destructor)exposition_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A merged exposition, written whole by tobytes() or in slices by slices().",
    .tp_as_sequence = &exposition_as_sequence,
    .tp_methods = exposition_methods,
};

PyDoc_STRVAR(merge_bodies_doc,
"merge_bodies(bodies, added_labels, label_name, openmetrics, converting, keep, eof, /)\n--\n\n"
"Merge canonical bodies into one exposition, in OpenMetrics when openmetrics is true.\n\n"
"bodies is a tuple of bytes, added_labels a tuple of the `name=\"value\"` item to add to\n"
"each body's samples (the values must differ), and converting a tuple that is true for each\n"
"text body going into OpenMetrics; every other body must be in the output format.\n"
"keep is None, or keep(sample_name, body_index) returns whether to write that body's samples\n"
"of that name: a series filter that depends on nothing else.\n"
"eof is whether OpenMetrics output ends in # EOF.\n"
"Return (merged, samples, conflicts, unchecked): merged is an Exposition, which writes the\n"
"merged exposition whole or in slices; samples counts each body's samples written,\n"
"conflicts lists (family, \"help\" or \"unit\") in the order merge.py reports them, and\n"
"unchecked the indexes of bodies with bytes above 0x7f, which the caller must check as UTF-8.\n"
"Return the index of the first body that is not canonical, or -1 when two bodies disagree on\n"
"a family's type: the general path must merge those.");

static PyObject *
merge_bodies(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7 || !PyTuple_Check(args[0]) || !PyTuple_Check(args[1]) || !PyBytes_Check(args[2]) ||
        !PyTuple_Check(args[4]) || PyTuple_GET_SIZE(args[0]) != PyTuple_GET_SIZE(args[1]) ||
        PyTuple_GET_SIZE(args[0]) != PyTuple_GET_SIZE(args[4]) ||
        (args[5] != Py_None && !PyCallable_Check(args[5]))) {
        PyErr_SetString(PyExc_TypeError, "merge_bodies takes (tuple[bytes], tuple[bytes], bytes, bool, "
                                         "tuple[bool], callable | None, bool), the tuples of the same length");
        return NULL;
    }
    int openmetrics = PyObject_IsTrue(args[3]);
    if (openmetrics < 0)
        return NULL;
    int eof = PyObject_IsTrue(args[6]);
    if (eof < 0)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(args[0]);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(args[0], i)) || !PyBytes_Check(PyTuple_GET_ITEM(args[1], i))) {
            PyErr_SetString(PyExc_TypeError, "bodies and added labels must be bytes");
            return NULL;
        }
    }

    const char **texts = PyMem_Malloc((size_t)(count + 1) * sizeof(char *));
    const char **added = PyMem_Malloc((size_t)(count + 1) * sizeof(char *));
    Py_ssize_t *added_lengths = PyMem_Malloc((size_t)(count + 1) * sizeof(Py_ssize_t));
    PyObject *conflicts = PyList_New(0);
    PyObject *unchecked = PyList_New(0);
    MergeState state = {0};
    SeriesSlot *table = NULL;
    size_t table_slots = 0;
    PyObject *result = NULL;
    if (texts == NULL || added == NULL || added_lengths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (conflicts == NULL || unchecked == NULL)
        goto done;

    const char *label_name = PyBytes_AS_STRING(args[2]);
    Py_ssize_t label_name_length = PyBytes_GET_SIZE(args[2]);
    Py_ssize_t previous_first = 0;
    int previous_converting = 0, previous_wide = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *body = PyTuple_GET_ITEM(args[0], i);
        texts[i] = PyBytes_AS_STRING(body);
        added[i] = PyBytes_AS_STRING(PyTuple_GET_ITEM(args[1], i));
        added_lengths[i] = PyBytes_GET_SIZE(PyTuple_GET_ITEM(args[1], i));
        /* A converted body is text going into OpenMetrics, the one conversion done here. */
        int converting = PyObject_IsTrue(PyTuple_GET_ITEM(args[4], i));
        if (converting < 0)
            goto done;
        if (converting && !openmetrics) {
            PyErr_SetString(PyExc_ValueError, "merge_bodies converts text bodies to OpenMetrics only");
            goto done;
        }
        /* The body before is the reference when it was read by the same rules. Its bytes above
         * 0x7f may be in series this body copies unchecked, so they make this body unchecked. */
        Py_ssize_t first_block = state.block_count;
        Reference reference = {texts[i > 0 ? i - 1 : 0], previous_first, first_block};
        int same_rules = i > 0 && previous_converting == converting;
        int wide = 0;
        int canonical = read_canonical(&state, i, texts[i], PyBytes_GET_SIZE(body), openmetrics && !converting,
                                       converting, label_name, label_name_length,
                                       same_rules ? &reference : NULL, args[5], &table, &table_slots,
                                       &wide);
        if (canonical < 0)
            goto done;
        if (canonical == 0) {
            result = PyLong_FromSsize_t(i);
            goto done;
        }
        /* Replicas have as many lines as the first body, so the records are sized for all of
         * them at once rather than doubled as they fill: doubling leaves up to half unused, 3 MB
         * at 16 workers x 10,000 samples. */
        if (i == 0 && count > 1) {
            Py_ssize_t expected = state.line_count * count + state.line_count / 16;
            if (expected > state.line_capacity && resize_lines(&state, expected) < 0)
                goto done;
        }
        wide = wide || (same_rules && previous_wide);
        previous_first = first_block;
        previous_converting = converting;
        previous_wide = wide;
        if (wide) {
            PyObject *index = PyLong_FromSsize_t(i);
            int appended = index == NULL ? -1 : PyList_Append(unchecked, index);
            Py_XDECREF(index);
            if (appended < 0)
                goto done;
        }
    }

    int joined = join_blocks(&state, conflicts);
    if (joined < 0)
        goto done;
    if (joined == 0) {
        result = PyLong_FromSsize_t(-1);
        goto done;
    }

    PyObject *samples = PyTuple_New(count);
    if (samples == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t kept = 0;
        for (Py_ssize_t b = 0; b < state.block_count; b++) {
            if (state.blocks[b].body == i)
                kept += state.blocks[b].kept;
        }
        PyObject *number = PyLong_FromSsize_t(kept);
        if (number == NULL) {
            Py_DECREF(samples);
            goto done;
        }
        PyTuple_SET_ITEM(samples, i, number);
    }
    /* The records live as long as the response is being sent, so they are made compact. */
    WrittenLine *written = NULL;
    Py_ssize_t refused = -1;
    int compacted = compact_lines(&state, &written, &refused);
    if (compacted <= 0) {
        Py_DECREF(samples);
        if (compacted == 0)
            result = PyLong_FromSsize_t(refused);
        goto done;
    }
    ExpositionObject *merged = PyObject_New(ExpositionObject, &ExpositionType);
    if (merged == NULL) {
        PyMem_Free(written);
        Py_DECREF(samples);
        goto done;
    }
    merged->written = written;
    merged->state = state;
    state = (MergeState){0}; /* the exposition owns the records now */
    merged->texts = texts;
    merged->labels = added;
    merged->label_lengths = added_lengths;
    texts = NULL;
    added = NULL;
    added_lengths = NULL;
    Py_INCREF(args[0]);
    merged->bodies = args[0];
    Py_INCREF(args[1]);
    merged->added_labels = args[1];
    merged->openmetrics = openmetrics;
    merged->eof = eof;
    merged->size = exposition_size(merged);
    result = Py_BuildValue("(NNOO)", (PyObject *)merged, samples, conflicts, unchecked);

done:
    PyMem_Free(texts);
    PyMem_Free(added);
    PyMem_Free(added_lengths);
    PyMem_Free(table);
    Py_XDECREF(conflicts);
    Py_XDECREF(unchecked);
    free_state(&state);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_body", (PyCFunction)(void (*)(void))scan_body, METH_FASTCALL, scan_body_doc},
    {"relabel_run", (PyCFunction)(void (*)(void))relabel_run, METH_FASTCALL, relabel_run_doc},
    {"series_keys", (PyCFunction)(void (*)(void))series_keys, METH_FASTCALL, series_keys_doc},
    {"merge_bodies", (PyCFunction)(void (*)(void))merge_bodies, METH_FASTCALL, merge_bodies_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT,
    .m_name = "lsif_agg.exposition._relabel",
    .m_doc = "The compiled kernel of the exposition fast path.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__relabel(void)
{
    fill_classes();
    if (PyType_Ready(&ExpositionType) < 0 || PyType_Ready(&SlicesType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_definition);
    if (module == NULL)
        return NULL;
    Py_INCREF(&ExpositionType);
    if (PyModule_AddObject(module, "Exposition", (PyObject *)&ExpositionType) < 0) {
        Py_DECREF(&ExpositionType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
