/* The value and timestamp tokens of a sample line, checked and converted as syntax.py does,
 * and the hash of a series. Shared by the kernel (_relabel.c) and the normalizer
 * (_normalize.c), which are separate extensions, so each compiles its own static copy. */

#ifndef LSIF_AGG_TOKENS_H
#define LSIF_AGG_TOKENS_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

/* As syntax.MAX_TIMESTAMP_LENGTH. */
#define MAX_TIMESTAMP_LENGTH 64
/* A text timestamp is integer milliseconds that fit in an int64. */
#define MAX_TEXT_TIMESTAMP_DIGITS 19

static inline int
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Whether s..e is `word`, which is lower case, in any case. */
static int
equals_folded(const char *s, const char *e, const char *word)
{
    Py_ssize_t n = (Py_ssize_t)strlen(word);
    if (e - s != n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + ('a' - 'A'));
        if (c != word[i])
            return 0;
    }
    return 1;
}

/* [0-9]+\.?[0-9]*|\.[0-9]+ followed by an optional [eE][+-]?[0-9]+, to the end. */
static int
is_decimal(const char *s, const char *e)
{
    Py_ssize_t whole = 0, fraction = 0;
    while (s < e && is_digit(*s)) {
        s++;
        whole++;
    }
    if (s < e && *s == '.') {
        s++;
        while (s < e && is_digit(*s)) {
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
        if (s == e || !is_digit(*s))
            return 0;
        while (s < e && is_digit(*s))
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

/* As syntax._TEXT_TIMESTAMP and _OPENMETRICS_TIMESTAMP, within MAX_TIMESTAMP_LENGTH. */
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
    if (digits < 1 || digits > MAX_TEXT_TIMESTAMP_DIGITS)
        return 0;
    for (; s < e; s++) {
        if (!is_digit(*s))
            return 0;
    }
    return 1;
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

/* Hash bytes for the tables that find repeated series and family names. */
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

#endif
