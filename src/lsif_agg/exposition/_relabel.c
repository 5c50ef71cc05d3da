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

/* Far above what client libraries write. A line with more labels goes to the general reader. */
#define MAX_LABELS 64
/* As syntax.MAX_TIMESTAMP_LENGTH. */
#define MAX_TIMESTAMP_LENGTH 64
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
} Rules;

static int
lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

static int
equals_folded(const char *s, const char *e, const char *word)
{
    Py_ssize_t n = (Py_ssize_t)strlen(word);
    if (e - s != n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (lower(s[i]) != word[i])
            return 0;
    }
    return 1;
}

/* [0-9]+\.?[0-9]*|\.[0-9]+ followed by an optional [eE][+-]?[0-9]+, to the end. */
static int
is_decimal(const char *s, const char *e)
{
    Py_ssize_t whole = 0, fraction = 0;
    while (s < e && IS(*s, DIGIT)) {
        s++;
        whole++;
    }
    if (s < e && *s == '.') {
        s++;
        while (s < e && IS(*s, DIGIT)) {
            s++;
            fraction++;
        }
    }
    if (whole == 0 && fraction == 0)
        return 0;

    if (s < e && (*s == 'e' || *s == 'E')) {
        s++;
        if (s < e && (*s == '+' || *s == '-'))
            s++;
        if (s == e || !IS(*s, DIGIT))
            return 0;
        while (s < e && IS(*s, DIGIT))
            s++;
    }
    return s == e;
}

/* As syntax._VALUE: a signed decimal or Inf/Infinity in any case, or an unsigned NaN. */
static int
is_value(const char *s, const char *e)
{
    if (equals_folded(s, e, "nan"))
        return 1;
    if (s < e && (*s == '+' || *s == '-'))
        s++;
    if (s < e && (*s == 'i' || *s == 'I'))
        return equals_folded(s, e, "inf") || equals_folded(s, e, "infinity");
    return is_decimal(s, e);
}

/* As syntax._TEXT_TIMESTAMP and _OPENMETRICS_TIMESTAMP. */
static int
is_timestamp(const char *s, const char *e, int openmetrics)
{
    if (e - s > MAX_TIMESTAMP_LENGTH)
        return 0;
    if (s < e && (*s == '+' || *s == '-'))
        s++;
    if (openmetrics)
        return is_decimal(s, e);

    Py_ssize_t digits = e - s;
    if (digits < 1 || digits > 19)
        return 0;
    for (; s < e; s++) {
        if (!IS(*s, DIGIT))
            return 0;
    }
    return 1;
}

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

/* Read the label set after `{` up to and including `}`; return the byte after it, or NULL. */
static const char *
scan_labels(const char *p, const char *e, const Rules *rules)
{
    const char *names[MAX_LABELS];
    Py_ssize_t lengths[MAX_LABELS];
    int count = 0;

    for (;;) {
        /* The label name: legacy alphabet, not the added label's, not given before. */
        const char *name = p;
        if (p >= e || !IS(*p, LABEL_START))
            return NULL;
        p++;
        while (p < e && IS(*p, LABEL_REST))
            p++;
        Py_ssize_t length = p - name;
        if (rules->clashing != NULL && length == rules->clashing_length &&
            memcmp(name, rules->clashing, (size_t)length) == 0)
            return NULL;
        if (count == MAX_LABELS)
            return NULL;
        for (int i = 0; i < count; i++) {
            if (lengths[i] == length && memcmp(names[i], name, (size_t)length) == 0)
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
            while (p < e && !IS(*p, VALUE_STOP))
                p++;
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
    line->name_end = p - run;

    if (p < e && *p == '{') {
        p = scan_labels(p + 1, e, rules);
        if (p == NULL)
            return -1;
    }
    line->key_end = p - run;

    /* The value, then an optional timestamp, each after one blank. */
    if (p >= e || *p != ' ')
        return -1;
    const char *value = ++p;
    while (p < e && *p != ' ' && *p != '\n')
        p++;
    if (!is_value(value, p))
        return -1;
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
    return allowed;
}

static uint64_t
hash_bytes(const char *s, Py_ssize_t n)
{
    uint64_t hash = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, s, 8);
        hash = (hash ^ word) * 0xff51afd7ed558ccdULL;
        hash ^= hash >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t word = 0;
    memcpy(&word, s, (size_t)n);
    hash = (hash ^ word) * 0xc4ceb9fe1a85ec53ULL;
    return hash ^ (hash >> 29);
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
    return 0;
}

/* Write checked integer milliseconds s..e as seconds, as syntax.milliseconds_to_seconds does,
 * and return the length written: at most 4 bytes more than e - s, for "5" becomes "0.005". */
static Py_ssize_t
write_seconds(char *out, const char *s, const char *e)
{
    int negative = *s == '-';
    if (*s == '+' || *s == '-')
        s++;
    while (s < e && *s == '0')
        s++;
    Py_ssize_t digits = e - s;
    if (digits == 0) {
        *out = '0';
        return 1;
    }

    char *start = out;
    if (negative)
        *out++ = '-';
    if (digits > 3) {
        memcpy(out, s, (size_t)(digits - 3));
        out += digits - 3;
    }
    else {
        *out++ = '0';
    }
    char fraction[3];
    for (Py_ssize_t i = 0; i < 3; i++) {
        Py_ssize_t index = digits - 3 + i;
        fraction[i] = index >= 0 ? s[index] : '0';
    }
    int length = 3;
    while (length > 0 && fraction[length - 1] == '0')
        length--;
    if (length > 0) {
        *out++ = '.';
        memcpy(out, fraction, (size_t)length);
        out += length;
    }
    return out - start;
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

static PyMethodDef methods[] = {
    {"scan_body", (PyCFunction)(void (*)(void))scan_body, METH_FASTCALL, scan_body_doc},
    {"relabel_run", (PyCFunction)(void (*)(void))relabel_run, METH_FASTCALL, relabel_run_doc},
    {"series_keys", (PyCFunction)(void (*)(void))series_keys, METH_FASTCALL, series_keys_doc},
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
    return PyModuleDef_Init(&module_definition);
}
