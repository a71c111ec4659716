/* SPDX-License-Identifier: MIT */
#include "base64.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t smolvm_base64_encode(char *out, const unsigned char *in, size_t len)
{
    char *o = out;
    size_t i;

    for (i = 0; i + 2 < len; i += 3) {
        *o++ = alphabet[in[i] >> 2];
        *o++ = alphabet[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
        *o++ = alphabet[((in[i + 1] & 15) << 2) | (in[i + 2] >> 6)];
        *o++ = alphabet[in[i + 2] & 63];
    }
    if (i < len) {
        *o++ = alphabet[in[i] >> 2];
        if (i + 1 < len) {
            *o++ = alphabet[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
            *o++ = alphabet[(in[i + 1] & 15) << 2];
        } else {
            *o++ = alphabet[(in[i] & 3) << 4];
            *o++ = '=';
        }
        *o++ = '=';
    }
    *o = '\0';
    return (size_t)(o - out);
}

static int value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long smolvm_base64_decode(unsigned char *out, size_t outlen, const char *in, size_t inlen)
{
    const char *end = in + inlen;
    unsigned acc = 0;
    int bits = 0;
    size_t n = 0;

    for (; in < end && *in != '='; in++) {
        int v = value((unsigned char)*in);

        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n == outlen)
                return -1;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    while (in < end && *in == '=')
        in++;
    return in < end ? -1 : (long)n;
}
