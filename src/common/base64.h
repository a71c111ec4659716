/* SPDX-License-Identifier: MIT */
/* Standard base64 (RFC 4648, with padding), shared by the library and the guest. */
#ifndef SMOLVM_BASE64_H
#define SMOLVM_BASE64_H

#include <stddef.h>

/* Bytes base64 needs for len input bytes, without the terminating NUL. */
#define SMOLVM_BASE64_LEN(len) (((len) + 2) / 3 * 4)

/* Encode len bytes into out (at least SMOLVM_BASE64_LEN(len) + 1 bytes), NUL-terminated.
 * Returns the encoded length. */
size_t smolvm_base64_encode(char *out, const unsigned char *in, size_t len);

/* Decode inlen characters (padding optional; no whitespace) into out (outlen bytes).
 * Returns the decoded length, or -1 for a character outside the alphabet, text after
 * the padding, or output that would not fit. */
long smolvm_base64_decode(unsigned char *out, size_t outlen, const char *in, size_t inlen);

#endif
