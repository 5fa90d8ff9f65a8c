// RSA signing through the system's OpenSSL (already loaded for libcurl's TLS). On this
// machine's CPUs OpenSSL 3's RSA is about twice as fast as the BoringSSL inside swift-crypto,
// and DKIM makes one RSA signature per message. Typed wrappers: Swift sees no macros.
#ifndef MAILROUTE_COPENSSL_SHIM_H
#define MAILROUTE_COPENSSL_SHIM_H

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

// A private key from DER: PKCS#1 RSAPrivateKey, or PKCS#8. NULL when it does not parse.
static inline EVP_PKEY *mr_private_key_from_der(const unsigned char *der, long length, int pkcs8) {
    const unsigned char *p = der;
    return pkcs8 ? d2i_AutoPrivateKey(NULL, &p, length) : d2i_PrivateKey(EVP_PKEY_RSA, NULL, &p, length);
}

static inline void mr_private_key_free(EVP_PKEY *key) { EVP_PKEY_free(key); }

// RSASSA-PKCS1-v1_5 over a SHA-256 digest (RFC 8017 §8.2): the signature's length, or -1.
static inline int mr_rsa_sign_sha256_digest(EVP_PKEY *key, const unsigned char *digest, size_t digest_length,
                                            unsigned char *signature, size_t capacity) {
    EVP_PKEY_CTX *context = EVP_PKEY_CTX_new(key, NULL);
    if (context == NULL) return -1;
    size_t length = capacity;
    int ok = EVP_PKEY_sign_init(context) > 0
        && EVP_PKEY_CTX_set_rsa_padding(context, RSA_PKCS1_PADDING) > 0
        && EVP_PKEY_CTX_set_signature_md(context, EVP_sha256()) > 0
        && EVP_PKEY_sign(context, signature, &length, digest, digest_length) > 0;
    EVP_PKEY_CTX_free(context);
    return ok ? (int)length : -1;
}

#endif
