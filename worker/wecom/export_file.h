/* One file of a WeCom export job (export/user's data_list), read piece by piece:
 * its size and md5 (of the ciphertext, as data_list states them), its
 * decryption (AES-256-CBC, key = base64decode(encoding_aeskey + "="), IV = the
 * key's first 16 bytes, PKCS#7 padding to 32 bytes, unpadded here) and its
 * members, cut out of the plaintext {"userlist": [...]} as they complete.
 *
 *   export_file f;
 *   export_file_init(&f, aeskey, size, md5, EXPORT_FILE_DECODE, err, sizeof err);
 *   for each piece of ciphertext, in order: export_file_feed(&f, data, len, err, n);
 *       export_file_take(&f, &text, &len, &members);  // the members completed so far,
 *                                                    // as a user/list answer's text
 *   export_file_finish(&f, err, n);                   // size, md5, padding, the JSON's end
 *   export_file_free(&f);
 *
 * Memory: the plaintext is never held whole. What is held is the members
 * completed since the last take (the caller takes after every piece, so a
 * piece's worth), the member being cut (at most EXPORT_MEMBER_MAX bytes, else
 * an error), and 32 bytes of plaintext held back for the unpadding. Nothing
 * here touches the network or the loop. */
#ifndef ORGSYNC_EXPORT_FILE_H
#define ORGSYNC_EXPORT_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define EXPORT_KEY_LEN 43
/* One member's object, at most (user/list members are a few hundred bytes). */
#define EXPORT_MEMBER_MAX (256u << 10)

typedef enum export_file_mode {
    EXPORT_FILE_VERIFY = 0, /* size and md5 only */
    EXPORT_FILE_DECODE      /* and decrypt, unpad, cut members */
} export_file_mode;

typedef struct export_file {
    export_file_mode mode;
    void *md;     /* EVP_MD_CTX */
    void *cipher; /* EVP_CIPHER_CTX, DECODE only */
    uint64_t size, seen;
    char md5[33];
    unsigned char tail[32]; /* plaintext held back for the unpadding */
    size_t ntail;
    /* the member cutter */
    int st;    /* where in {"userlist":[ ... ]} the scan is */
    int depth; /* of the member being cut */
    int in_str, esc, key_userlist;
    buf key;    /* a top-level key being read */
    buf member; /* the member being cut */
    buf out;    /* {"errcode":0,"errmsg":"ok","userlist":[ completed members */
    uint32_t nout;
    uint64_t members; /* completed, in all */
    int failed;
} export_file;

/* 1 if key is 43 characters of [A-Za-z0-9]. */
int export_key_ok(const char *key);
/* A random encoding_aeskey (OpenSSL's RAND_bytes) into out (44 bytes). 0 or -EIO. */
int export_key_new(char out[EXPORT_KEY_LEN + 1]);

/* md5: 32 hex digits (either case). 0, or -EINVAL (a bad key or md5, err says
 * which) / -ENOMEM. On an error nothing is held. */
int export_file_init(export_file *f, const char *aeskey, uint64_t size, const char *md5,
                     export_file_mode mode, char *err, size_t errlen);
/* The next len bytes of the file. 0 or -EINVAL (more bytes than size, a member
 * over EXPORT_MEMBER_MAX, plaintext that is not {"userlist":[{...},...]}),
 * err says what; after an error the file stays failed. */
int export_file_feed(export_file *f, const void *data, size_t len, char *err, size_t errlen);
/* The members completed since the last take, as the text of a user/list answer
 * ({"errcode":0,"errmsg":"ok","userlist":[...]}), *text owned by f until the
 * next call; 0 members: *text NULL. */
void export_file_take(export_file *f, const char **text, size_t *len, uint32_t *members);
/* After the last byte: the size, the md5, the padding and the JSON's end are
 * checked; 0, or -EINVAL with err. A DECODE file's last members are then ready
 * for one more take. */
int export_file_finish(export_file *f, char *err, size_t errlen);
void export_file_free(export_file *f);

#endif
