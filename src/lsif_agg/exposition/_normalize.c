/* The compiled reader for the runs of sample lines that the kernel in _relabel.c rejects.
 *
 * The kernel takes only lines that the general reader in read.py writes back unchanged apart
 * from the added label. This module also takes the lines that need rewriting. Those have CRLF
 * ends, blank lines, blanks and tabs around tokens, `{}`, a trailing comma, or escapes other
 * than \\, \" and \n. Or they have a label named like the added one, a timestamp to convert to
 * the other format, or an exemplar. For each such line it writes exactly the bytes read.py
 * writes: the relabelled line, and the series without the added label.
 *
 * It covers only the shapes that the general reader reads with syntax.COMMON_TEXT_LINE and
 * COMMON_OPENMETRICS_LINE. It stops at the first line it does not cover, which the general
 * reader then reads, so that every error keeps its message and line number. Such lines are
 * invalid lines, comment lines indented by blanks, quoted UTF-8 names, CRs inside a line,
 * exemplars of other shapes, OpenMetrics timestamps whose conversion needs decimal arithmetic
 * (an exponent, or more than 15 whole digits), more than MAX_LABELS labels, and a line that
 * repeats a series written earlier in the same call.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_tokens.h"

/* Far above what client libraries write. A line with more labels goes to the general reader. */
#define MAX_LABELS 64
/* OpenMetrics seconds with more whole digits may not fit in an int64 once in milliseconds,
 * so syntax.seconds_to_milliseconds converts them with decimal arithmetic. */
#define MAX_PLAIN_WHOLE_DIGITS 15
/* Room for any converted timestamp: a sign, 19 digits, a point and 3 decimals. */
#define CONVERTED_TIMESTAMP_SIZE 32

static const char EXPORTED[] = "exported_";
#define EXPORTED_LENGTH ((Py_ssize_t)(sizeof(EXPORTED) - 1))

enum {
    METRIC_START = 1, /* [a-zA-Z_:] */
    METRIC_REST = 2,  /* [a-zA-Z0-9_:] */
    LABEL_START = 4,  /* [a-zA-Z_] */
    LABEL_REST = 8,   /* [a-zA-Z0-9_] */
    DIGIT = 16,       /* [0-9] */
    BLANK = 32,       /* a blank or a tab, which may separate tokens */
    TOKEN_END = 64,   /* a blank, a tab, a CR, a newline or a NUL */
    QUOTE_STOP = 128, /* `"`, `\`, a CR, a newline or a NUL, which pause a label value scan */
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
        if (c == ' ' || c == '\t')
            class |= BLANK;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\0')
            class |= TOKEN_END;
        if (c == '"' || c == '\\' || c == '\r' || c == '\n' || c == '\0')
            class |= QUOTE_STOP;
        classes[c] = class;
    }
}

#define IS(c, class) (classes[(unsigned char)(c)] & (class))

/* Every line is read between its first byte and `e`, its end once stripped of blanks and CRs.
 * The byte at `e` is a blank, a tab, a CR, a newline, or the NUL that ends every bytes object,
 * because normalize_lines takes only runs that end at a line's end. Then after `e` come only
 * blanks, tabs and CRs up to a newline or that NUL. So loops over a class that has none of
 * those bytes stop by `e` without checking for it, and so do loops that stop at TOKEN_END.
 * A loop that stops at QUOTE_STOP stops at the latest at the newline or the NUL. */

/* --- reading ------------------------------------------------------------------------------ */

typedef struct {
    const char *name, *name_end;
    const char *value, *value_end; /* between the quotes, escapes as written */
    int rewritten;                 /* whether the value has an escape other than \\, \" and \n */
} Label;

typedef struct {
    Label items[MAX_LABELS];
    int count;
} LabelSet;

typedef struct {
    const char *name, *name_end;
    LabelSet labels;
    const char *value, *value_end;
    const char *stamp, *stamp_end; /* NULL when the line has no timestamp */
    char converted[CONVERTED_TIMESTAMP_SIZE]; /* the timestamp in the output format's unit */
    Py_ssize_t converted_length;
    int has_exemplar;
    LabelSet exemplar_labels;
    const char *exemplar_value, *exemplar_value_end;
    const char *exemplar_stamp, *exemplar_stamp_end; /* NULL when the exemplar has none */
} Sample;

typedef struct {
    const char *added; /* the whole `name="value"` item added first, or NULL */
    Py_ssize_t added_length;
    const char *label_name; /* the added label's name */
    Py_ssize_t label_name_length;
    int openmetrics;        /* the body's format */
    int output_openmetrics; /* the output format */
} Settings;

static const char *
skip_blanks(const char *p, const char *e)
{
    while (p < e && IS(*p, BLANK))
        p++;
    return p;
}

/* Return the end of a token: a blank, or the end of the line. A token that stops early, at a
 * CR or NUL inside the line, is then followed by neither a blank nor the end, which every
 * caller rejects, as the general reader rejects such a line. */
static const char *
skip_token(const char *p)
{
    while (!IS(*p, TOKEN_END))
        p++;
    return p;
}

/* Convert OpenMetrics seconds to integer milliseconds in one pass, cutting the digits after the
 * third decimal, as syntax.seconds_to_milliseconds does for the seconds that
 * syntax._PLAIN_SECONDS matches: no exponent and at most MAX_PLAIN_WHOLE_DIGITS whole digits.
 * Return the length written, or -1 for any other token, which then needs decimal arithmetic
 * or is invalid. */
static Py_ssize_t
convert_plain_seconds(char *out, const char *s, const char *e)
{
    if (e - s > MAX_TIMESTAMP_LENGTH)
        return -1;
    int negative = s < e && *s == '-';
    if (s < e && (*s == '+' || *s == '-'))
        s++;
    const char *whole = s;
    while (s < e && IS(*s, DIGIT))
        s++;
    Py_ssize_t whole_length = s - whole;
    const char *fraction = s, *fraction_end = s;
    if (s < e && *s == '.') {
        fraction = ++s;
        while (s < e && IS(*s, DIGIT))
            s++;
        fraction_end = s;
    }
    if (s != e || whole_length > MAX_PLAIN_WHOLE_DIGITS)
        return -1;
    if (whole_length == 0 && fraction == fraction_end)
        return -1; /* no digit at all */

    char digits[MAX_PLAIN_WHOLE_DIGITS + 3];
    memcpy(digits, whole, (size_t)whole_length);
    for (Py_ssize_t i = 0; i < 3; i++)
        digits[whole_length + i] = fraction + i < fraction_end ? fraction[i] : '0';
    Py_ssize_t count = whole_length + 3, first = 0;
    while (first < count && digits[first] == '0')
        first++;
    if (first == count) {
        *out = '0';
        return 1;
    }
    char *p = out;
    if (negative)
        *p++ = '-';
    memcpy(p, digits + first, (size_t)(count - first));
    return p + (count - first) - out;
}

/* Find the closing quote of the label value that starts at label->value, and note whether
 * the value must be rewritten. As syntax._QUOTED_TEXT, a backslash takes the next byte with it,
 * whatever it is. A CR is rejected, although the general reader keeps it, because merge.py may
 * split a block with bytes.splitlines, which would break the line there. */
static int
find_closing_quote(Label *label, const char *e)
{
    label->rewritten = 0;
    const char *p = label->value;
    for (;;) {
        while (!IS(*p, QUOTE_STOP))
            p++;
        if (p >= e || *p == '\r')
            return 0;
        if (*p == '"') {
            label->value_end = p;
            return 1;
        }
        if (*p == '\\') {
            if (e - p < 2 || p[1] == '\r')
                return 0;
            label->rewritten |= p[1] != '\\' && p[1] != '"' && p[1] != 'n';
            p += 2;
        }
        else {
            p++; /* a NUL inside the value */
        }
    }
}

/* Read the inside of a label set after its `{`, as syntax._LEGACY_LABEL_SET matches it:
 * blanks around every token and a trailing comma are allowed, an empty set too. Return the
 * byte after the `}`, or NULL. */
static const char *
read_label_set(const char *p, const char *e, LabelSet *set)
{
    set->count = 0;
    p = skip_blanks(p, e);
    for (;;) {
        if (p >= e)
            return NULL;
        if (*p == '}')
            return p + 1;
        if (set->count == MAX_LABELS || !IS(*p, LABEL_START))
            return NULL;

        Label *label = &set->items[set->count++];
        label->name = p++;
        while (IS(*p, LABEL_REST))
            p++;
        label->name_end = p;
        p = skip_blanks(p, e);
        if (p >= e || *p != '=')
            return NULL;
        p = skip_blanks(p + 1, e);
        if (p >= e || *p != '"')
            return NULL;
        label->value = p + 1;
        if (!find_closing_quote(label, e))
            return NULL;

        p = skip_blanks(label->value_end + 1, e);
        if (p < e && *p == ',')
            p = skip_blanks(p + 1, e);
        else if (p >= e || *p != '}')
            return NULL;
    }
}

static int
same_name(const Label *a, const Label *b)
{
    Py_ssize_t length = a->name_end - a->name;
    return b->name_end - b->name == length && memcmp(a->name, b->name, (size_t)length) == 0;
}

static int
has_repeated_name(const LabelSet *set)
{
    for (int i = 1; i < set->count; i++) {
        for (int j = 0; j < i; j++) {
            if (same_name(&set->items[i], &set->items[j]))
                return 1;
        }
    }
    return 0;
}

/* Read what follows `#` and its blanks as syntax._COMMON_EXEMPLAR matches it. */
static int
read_exemplar(const char *p, const char *e, Sample *sample)
{
    if (p >= e || *p != '{')
        return 0;
    p = read_label_set(p + 1, e, &sample->exemplar_labels);
    if (p == NULL)
        return 0;

    p = skip_blanks(p, e);
    sample->exemplar_value = p;
    p = skip_token(p);
    sample->exemplar_value_end = p;
    if (!is_value(sample->exemplar_value, p))
        return 0;

    sample->exemplar_stamp = NULL;
    if (p == e)
        return 1;
    sample->exemplar_stamp = skip_blanks(p, e);
    sample->exemplar_stamp_end = skip_token(sample->exemplar_stamp);
    return sample->exemplar_stamp_end == e &&
           is_timestamp(sample->exemplar_stamp, sample->exemplar_stamp_end, 1);
}

/* Check a sample's timestamp, and convert it when the output format differs. */
static int
read_timestamp(Sample *sample, const Settings *settings)
{
    const char *s = sample->stamp, *e = sample->stamp_end;
    if (settings->openmetrics == settings->output_openmetrics)
        return is_timestamp(s, e, settings->openmetrics);
    if (settings->openmetrics) {
        sample->converted_length = convert_plain_seconds(sample->converted, s, e);
        return sample->converted_length >= 0;
    }
    if (!is_timestamp(s, e, 0))
        return 0;
    sample->converted_length = write_seconds(sample->converted, s, e);
    return 1;
}

/* Read a line stripped of blanks and CRs at both ends, token by token as the common-line
 * pattern in syntax.py matches it. Each token is taken as far as that pattern takes it first,
 * so a line read here has the same tokens as there. Any line not read here goes to the general
 * reader, which also gives the error messages. */
static int
read_sample(const char *p, const char *e, const Settings *settings, Sample *sample)
{
    int openmetrics = settings->openmetrics;
    sample->name = p;
    if (!IS(*p, METRIC_START))
        return 0;
    p++;
    while (IS(*p, METRIC_REST))
        p++;
    sample->name_end = p;

    p = skip_blanks(p, e);
    sample->labels.count = 0;
    if (p < e && *p == '{') {
        p = read_label_set(p + 1, e, &sample->labels);
        if (p == NULL || has_repeated_name(&sample->labels))
            return 0;
        p = skip_blanks(p, e);
    }

    /* The value and the timestamp each end at a blank or at the end of the line. */
    sample->value = p;
    p = skip_token(p);
    sample->value_end = p;
    if (!is_value(sample->value, p))
        return 0;
    p = skip_blanks(p, e);
    sample->stamp = NULL;
    if (p < e && *p != '#') {
        sample->stamp = p;
        p = skip_token(p);
        sample->stamp_end = p;
        if (!read_timestamp(sample, settings))
            return 0;
        p = skip_blanks(p, e);
    }

    sample->has_exemplar = p < e;
    if (!sample->has_exemplar)
        return 1;
    /* Text 0.0.4 has no exemplars: the general reader rejects the line. */
    return *p == '#' && openmetrics && read_exemplar(skip_blanks(p + 1, e), e, sample);
}

/* --- writing ------------------------------------------------------------------------------ */

/* Output bytes. Each line reserves room for its longest output first (see write_sample), and
 * the writers below then copy without checks, each returning where it stopped. */
typedef struct {
    char *data;
    Py_ssize_t length;
    Py_ssize_t capacity;
    Py_ssize_t first_capacity; /* allocated at the first line, so a call that writes none
                                  allocates nothing */
} Buffer;

static int
grow(Buffer *buffer, Py_ssize_t needed)
{
    Py_ssize_t capacity = buffer->capacity ? buffer->capacity : buffer->first_capacity;
    while (capacity - buffer->length < needed) {
        if (capacity > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        capacity *= 2;
    }
    char *data = PyMem_Realloc(buffer->data, (size_t)capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    buffer->data = data;
    buffer->capacity = capacity;
    return 0;
}

static int
reserve(Buffer *buffer, Py_ssize_t needed)
{
    return needed <= buffer->capacity - buffer->length ? 0 : grow(buffer, needed);
}

static char *
put(char *out, const char *s, Py_ssize_t n)
{
    memcpy(out, s, (size_t)n);
    return out + n;
}

/* Write a label value keeping \\, \" and \n. Any other backslash is a literal one, as
 * Prometheus reads it, so it is written doubled, as syntax.canonical_value does. */
static char *
write_value(char *out, const Label *label)
{
    const char *s = label->value, *e = label->value_end;
    if (!label->rewritten)
        return put(out, s, e - s);

    const char *copied = s;
    while (s < e) {
        if (*s != '\\') {
            s++;
            continue;
        }
        char escaped = s[1]; /* find_closing_quote leaves no backslash last */
        if (escaped != '\\' && escaped != '"' && escaped != 'n') {
            out = put(out, copied, s - copied);
            *out++ = '\\';
            *out++ = '\\';
            copied = s + 1;
        }
        s += 2;
    }
    return put(out, copied, e - copied);
}

static char *
write_label(char *out, const char *name, Py_ssize_t name_length, int exported, const Label *label,
            int first)
{
    if (!first)
        *out++ = ',';
    for (int i = 0; i < exported; i++)
        out = put(out, EXPORTED, EXPORTED_LENGTH);
    out = put(out, name, name_length);
    *out++ = '=';
    *out++ = '"';
    out = write_value(out, label);
    *out++ = '"';
    return out;
}

/* Whether a label is named "exported_" `times` times and then `name`. */
static int
is_exported_name(const Label *label, int times, const char *name, Py_ssize_t name_length)
{
    const char *p = label->name;
    if (label->name_end - p != times * EXPORTED_LENGTH + name_length)
        return 0;
    for (int i = 0; i < times; i++, p += EXPORTED_LENGTH) {
        if (memcmp(p, EXPORTED, (size_t)EXPORTED_LENGTH) != 0)
            return 0;
    }
    return memcmp(p, name, (size_t)name_length) == 0;
}

/* How many times a clashing label is prefixed with "exported_": once, and once more for each
 * label of the name tried that has a non-empty value, as read.rename_clashing_label does. */
static int
count_exported(const LabelSet *set, const char *name, Py_ssize_t name_length)
{
    int times = 1;
    for (;;) {
        int taken = 0;
        for (int i = 0; i < set->count && !taken; i++) {
            const Label *label = &set->items[i];
            taken = label->value_end > label->value &&
                    is_exported_name(label, times, name, name_length);
        }
        if (!taken)
            return times;
        times++;
    }
}

/* Write the labels of a sample's series, joined by commas, with a label named like the added
 * one renamed or dropped as read.rename_clashing_label does. */
static char *
write_labels(char *out, const LabelSet *set, const Settings *settings)
{
    int clashing = -1;
    for (int i = 0; settings->added != NULL && i < set->count && clashing < 0; i++) {
        if (is_exported_name(&set->items[i], 0, settings->label_name, settings->label_name_length))
            clashing = i;
    }
    int first = 1;
    if (clashing < 0) {
        for (int i = 0; i < set->count; i++, first = 0) {
            const Label *label = &set->items[i];
            out = write_label(out, label->name, label->name_end - label->name, 0, label, first);
        }
        return out;
    }

    /* An empty value is no label to Prometheus, so there is nothing to keep. */
    const Label *clash = &set->items[clashing];
    int empty = clash->value_end == clash->value;
    int times = empty ? 0 : count_exported(set, settings->label_name, settings->label_name_length);
    for (int i = 0; i < set->count; i++) {
        const Label *label = &set->items[i];
        if (i == clashing && !empty) {
            out = write_label(out, settings->label_name, settings->label_name_length, times, label,
                              first);
            first = 0;
        }
        else if (i != clashing &&
                 (empty || !is_exported_name(label, times, settings->label_name,
                                             settings->label_name_length))) {
            out = write_label(out, label->name, label->name_end - label->name, 0, label, first);
            first = 0;
        }
    }
    return out;
}

static char *
write_timestamp(char *out, const Sample *sample, const Settings *settings)
{
    *out++ = ' ';
    if (settings->openmetrics == settings->output_openmetrics)
        return put(out, sample->stamp, sample->stamp_end - sample->stamp);
    return put(out, sample->converted, sample->converted_length);
}

/* Write an exemplar as syntax.read_exemplar does: labels canonical, single blanks. */
static char *
write_exemplar(char *out, const Sample *sample)
{
    const LabelSet *set = &sample->exemplar_labels;
    out = put(out, " # {", 4);
    for (int i = 0; i < set->count; i++) {
        const Label *label = &set->items[i];
        out = write_label(out, label->name, label->name_end - label->name, 0, label, i == 0);
    }
    out = put(out, "} ", 2);
    out = put(out, sample->exemplar_value, sample->exemplar_value_end - sample->exemplar_value);
    if (sample->exemplar_stamp != NULL) {
        *out++ = ' ';
        out = put(out, sample->exemplar_stamp, sample->exemplar_stamp_end - sample->exemplar_stamp);
    }
    return out;
}

/* Write a sample's series, newline included, to `series`, and its relabelled line to `block`,
 * as TargetReader.add_sample does; return -1 with an exception set when memory runs out.
 *
 * Each output is at most twice the stripped line, plus the added label, the "exported_"
 * prefixes and a few bytes: names, label items and tokens are copied once; a value escape
 * grows from 2 bytes to 3 at most; and the line gains at most its braces, a comma, blanks
 * around the value and the exemplar, a newline, and 4 bytes of a converted timestamp. */
static int
write_sample(Buffer *block, Buffer *series, const Sample *sample, Py_ssize_t line_length,
             const Settings *settings)
{
    Py_ssize_t longest = 2 * line_length + EXPORTED_LENGTH * (sample->labels.count + 1) + 64;
    if (reserve(series, longest) < 0 || reserve(block, longest + settings->added_length) < 0)
        return -1;

    Py_ssize_t name_length = sample->name_end - sample->name;
    char *key = series->data + series->length;
    char *labels = put(key, sample->name, name_length) + 1;
    char *labels_end = write_labels(labels, &sample->labels, settings);
    Py_ssize_t labels_length = labels_end - labels;
    char *out = key + name_length;
    if (labels_length > 0) {
        labels[-1] = '{';
        *labels_end = '}';
        out = labels_end + 1;
    }
    *out++ = '\n';
    series->length = out - series->data;

    out = put(block->data + block->length, sample->name, name_length);
    if (settings->added != NULL || labels_length > 0)
        *out++ = '{';
    if (settings->added != NULL)
        out = put(out, settings->added, settings->added_length);
    if (settings->added != NULL && labels_length > 0)
        *out++ = ',';
    if (labels_length > 0)
        out = put(out, labels, labels_length);
    if (settings->added != NULL || labels_length > 0)
        *out++ = '}';

    *out++ = ' ';
    out = put(out, sample->value, sample->value_end - sample->value);
    if (sample->stamp != NULL)
        out = write_timestamp(out, sample, settings);
    if (sample->has_exemplar && settings->output_openmetrics)
        out = write_exemplar(out, sample);
    *out++ = '\n';
    block->length = out - block->data;
    return 0;
}

/* --- one call ----------------------------------------------------------------------------- */

/* A series written in this call, for finding a repeat. */
typedef struct {
    Py_ssize_t start; /* in the series buffer */
    Py_ssize_t length;
    uint64_t hash;
} Key;

/* The series written in this call: an open-addressing table of indexes into `keys`, grown
 * as lines are written, because a call may stop after a few lines of a long run. */
typedef struct {
    Key *keys;
    Py_ssize_t count;
    Py_ssize_t capacity;
    Py_ssize_t *slots; /* -1 for an empty slot */
    size_t slot_count; /* a power of two, at least twice `count` */
} KeySet;

/* Consecutive lines with the same sample name, and where they end in each output. */
typedef struct {
    const char *name;
    Py_ssize_t name_length;
    Py_ssize_t lines;
    Py_ssize_t source_end;
    Py_ssize_t block_end;
    Py_ssize_t series_end;
} Stretch;

typedef struct {
    Stretch *items;
    Py_ssize_t count;
    Py_ssize_t capacity;
} Stretches;

static int
grow_slots(KeySet *set)
{
    size_t slot_count = set->slot_count ? set->slot_count * 2 : 64;
    Py_ssize_t *slots = PyMem_Malloc(slot_count * sizeof(Py_ssize_t));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(slots, 0xff, slot_count * sizeof(Py_ssize_t));
    for (Py_ssize_t i = 0; i < set->count; i++) {
        size_t slot = (size_t)set->keys[i].hash & (slot_count - 1);
        while (slots[slot] >= 0)
            slot = (slot + 1) & (slot_count - 1);
        slots[slot] = i;
    }
    PyMem_Free(set->slots);
    set->slots = slots;
    set->slot_count = slot_count;
    return 0;
}

/* Add the series series->data[start:start + length] unless it was added before. Return 1 when
 * added, 0 for a repeat, -1 with an exception set. */
static int
add_key(KeySet *set, const Buffer *series, Py_ssize_t start, Py_ssize_t length)
{
    if ((size_t)(set->count + 1) * 2 > set->slot_count && grow_slots(set) < 0)
        return -1;
    if (set->count == set->capacity) {
        Py_ssize_t capacity = set->capacity ? set->capacity * 2 : 64;
        Key *keys = PyMem_Realloc(set->keys, (size_t)capacity * sizeof(Key));
        if (keys == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        set->keys = keys;
        set->capacity = capacity;
    }

    const char *text = series->data + start;
    uint64_t hash = hash_bytes(text, length);
    size_t slot = (size_t)hash & (set->slot_count - 1);
    while (set->slots[slot] >= 0) {
        const Key *other = &set->keys[set->slots[slot]];
        if (other->hash == hash && other->length == length &&
            memcmp(series->data + other->start, text, (size_t)length) == 0)
            return 0;
        slot = (slot + 1) & (set->slot_count - 1);
    }
    set->keys[set->count] = (Key){start, length, hash};
    set->slots[slot] = set->count++;
    return 1;
}

/* Count a written line into the last stretch, or open a new one when its name differs. */
static int
add_to_stretch(Stretches *stretches, const Sample *sample, Py_ssize_t source_end,
               const Buffer *block, const Buffer *series)
{
    Py_ssize_t name_length = sample->name_end - sample->name;
    Stretch *last = stretches->count ? &stretches->items[stretches->count - 1] : NULL;
    if (last == NULL || last->name_length != name_length ||
        memcmp(last->name, sample->name, (size_t)name_length) != 0) {
        if (stretches->count == stretches->capacity) {
            Py_ssize_t capacity = stretches->capacity ? stretches->capacity * 2 : 16;
            Stretch *items = PyMem_Realloc(stretches->items, (size_t)capacity * sizeof(Stretch));
            if (items == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            stretches->items = items;
            stretches->capacity = capacity;
        }
        last = &stretches->items[stretches->count++];
        *last = (Stretch){sample->name, name_length, 0, 0, 0, 0};
    }
    last->lines++;
    last->source_end = source_end;
    last->block_end = block->length;
    last->series_end = series->length;
    return 0;
}

typedef struct {
    Buffer block;
    Buffer series;
    KeySet keys;
    Stretches stretches;
    Sample sample;
} State;

static void
free_state(State *state)
{
    PyMem_Free(state->block.data);
    PyMem_Free(state->series.data);
    PyMem_Free(state->keys.keys);
    PyMem_Free(state->keys.slots);
    PyMem_Free(state->stretches.items);
    PyMem_Free(state);
}

/* Write one stripped, non-empty line. Return 1 when written, 0 when the general reader must
 * read it (nothing is then kept of it), -1 with an exception set. */
static int
write_line(State *state, const char *p, const char *e, Py_ssize_t source_end,
           const Settings *settings)
{
    if (*p == '#')
        return 0; /* a comment line indented by blanks */
    Sample *sample = &state->sample;
    if (!read_sample(p, e, settings, sample))
        return 0;

    Py_ssize_t block_length = state->block.length, series_length = state->series.length;
    if (write_sample(&state->block, &state->series, sample, e - p, settings) < 0)
        return -1;
    int added = add_key(&state->keys, &state->series, series_length,
                        state->series.length - series_length - 1);
    if (added <= 0) {
        /* A repeat goes to the general reader, so that no run this call writes repeats one. */
        state->block.length = block_length;
        state->series.length = series_length;
        return added;
    }
    return add_to_stretch(&state->stretches, sample, source_end, &state->block, &state->series) < 0
        ? -1
        : 1;
}

/* Write the lines of body[start:end] until one the general reader must read. Return where that
 * line starts, or `end`, and set *newlines to the newlines before it; -1 with an exception set. */
static Py_ssize_t
write_lines(State *state, const char *body, Py_ssize_t start, Py_ssize_t end,
            const Settings *settings, Py_ssize_t *newlines)
{
    Py_ssize_t position = start;
    *newlines = 0;
    while (position < end) {
        const char *line = body + position, *e = body + end;
        const char *newline = memchr(line, '\n', (size_t)(end - position));
        const char *line_end = newline != NULL ? newline : e;
        Py_ssize_t next = newline != NULL ? newline - body + 1 : end;

        /* As bytes.strip(b" \t\r") in read_lines. */
        while (line < line_end && (IS(*line, BLANK) || *line == '\r'))
            line++;
        while (line_end > line && (IS(line_end[-1], BLANK) || line_end[-1] == '\r'))
            line_end--;
        if (line < line_end) {
            int written = write_line(state, line, line_end, next, settings);
            if (written < 0)
                return -1;
            if (written == 0)
                return position;
        }
        *newlines += newline != NULL;
        position = next;
    }
    return end;
}

static PyObject *
build_stretches(const Stretches *stretches)
{
    PyObject *items = PyTuple_New(stretches->count);
    if (items == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < stretches->count; i++) {
        const Stretch *stretch = &stretches->items[i];
        PyObject *item = Py_BuildValue("(y#nnnn)", stretch->name, stretch->name_length,
                                       stretch->lines, stretch->source_end, stretch->block_end,
                                       stretch->series_end);
        if (item == NULL) {
            Py_DECREF(items);
            return NULL;
        }
        PyTuple_SET_ITEM(items, i, item);
    }
    return items;
}

static int
read_settings(Settings *settings, PyObject *const *args)
{
    PyObject *added = args[3], *label_name = args[4];
    if ((added != Py_None && !PyBytes_Check(added)) || !PyBytes_Check(label_name)) {
        PyErr_SetString(PyExc_TypeError, "added_label must be bytes or None, label_name bytes");
        return -1;
    }
    settings->added = added == Py_None ? NULL : PyBytes_AS_STRING(added);
    settings->added_length = added == Py_None ? 0 : PyBytes_GET_SIZE(added);
    settings->label_name = PyBytes_AS_STRING(label_name);
    settings->label_name_length = PyBytes_GET_SIZE(label_name);
    settings->openmetrics = PyObject_IsTrue(args[5]);
    settings->output_openmetrics = PyObject_IsTrue(args[6]);
    return settings->openmetrics < 0 || settings->output_openmetrics < 0 ? -1 : 0;
}

PyDoc_STRVAR(normalize_lines_doc,
"normalize_lines(body, start, end, added_label, label_name, openmetrics, output_openmetrics, /)\n"
"--\n\n"
"Write the sample lines of body[start:end] as read.py's general reader writes them.\n\n"
"Stop at the first line the general reader must read itself: one this module does not\n"
"cover, an invalid one, or one that repeats a series written earlier in this call.\n"
"Return (stop, newlines, block, series, stretches): where that line starts, or end; the\n"
"newlines before it; the relabelled lines; each line's series without the added label,\n"
"each followed by a newline; and for each stretch of lines with one sample name,\n"
"(name, lines, source_end, block_end, series_end). added_label is the whole\n"
"`name=\"value\"` item, or None to add nothing; openmetrics gives the body's format.");

static PyObject *
normalize_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "normalize_lines takes (bytes, int, int, bytes | None, "
                                         "bytes, bool, bool)");
        return NULL;
    }
    Py_ssize_t start = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    Py_ssize_t end = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (PyErr_Occurred())
        return NULL;
    const char *body = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    int in_body = 0 <= start && start <= end && end <= size;
    if (!in_body || (end < size && end > 0 && body[end - 1] != '\n')) {
        PyErr_Format(PyExc_ValueError,
                     "invalid run [%zd, %zd) of a body of %zd bytes; a run ends at a line's end",
                     start, end, size);
        return NULL;
    }
    Settings settings;
    if (read_settings(&settings, args) < 0)
        return NULL;

    /* On the heap, because a Sample holds two label sets of MAX_LABELS labels. */
    /* Not zeroed whole: the sample is filled line by line before it is read. */
    State *state = PyMem_Malloc(sizeof(State));
    if (state == NULL)
        return PyErr_NoMemory();
    state->block = (Buffer){NULL, 0, 0, 0};
    state->series = (Buffer){NULL, 0, 0, 0};
    state->keys = (KeySet){NULL, 0, 0, NULL, 0};
    state->stretches = (Stretches){NULL, 0, 0};
    /* Enough for most runs at once, but bounded, since a call may stop at its first line. */
    Py_ssize_t first_capacity = end - start;
    first_capacity = first_capacity < 4096 ? 4096 : first_capacity > 65536 ? 65536 : first_capacity;
    state->block.first_capacity = first_capacity + first_capacity / 4;
    state->series.first_capacity = first_capacity;
    Py_ssize_t newlines = 0;
    Py_ssize_t stop = write_lines(state, body, start, end, &settings, &newlines);
    PyObject *result = NULL;
    if (stop >= 0) {
        /* Py_BuildValue writes None for a NULL pointer, and a call that wrote nothing has none. */
        const char *block = state->block.data != NULL ? state->block.data : "";
        const char *series = state->series.data != NULL ? state->series.data : "";
        PyObject *stretches = build_stretches(&state->stretches);
        if (stretches != NULL)
            result = Py_BuildValue("(nny#y#N)", stop, newlines, block, state->block.length, series,
                                   state->series.length, stretches);
    }
    free_state(state);
    return result;
}

static PyMethodDef methods[] = {
    {"normalize_lines", (PyCFunction)(void (*)(void))normalize_lines, METH_FASTCALL,
     normalize_lines_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT,
    .m_name = "lsif_agg.exposition._normalize",
    .m_doc = "The compiled reader for sample lines that need rewriting.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__normalize(void)
{
    fill_classes();
    return PyModuleDef_Init(&module_definition);
}
