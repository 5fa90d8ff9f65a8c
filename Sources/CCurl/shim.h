// Typed wrappers for libcurl's variadic calls, which Swift cannot import.
#ifndef MAILROUTE_CCURL_SHIM_H
#define MAILROUTE_CCURL_SHIM_H

#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>

typedef int (*mr_curl_debug_callback)(CURL *handle, curl_infotype type, char *data, size_t size, void *userdata);

static inline CURLcode mr_curl_setopt_long(CURL *h, CURLoption o, long v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode mr_curl_setopt_string(CURL *h, CURLoption o, const char *v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode mr_curl_setopt_pointer(CURL *h, CURLoption o, void *v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode mr_curl_setopt_debug_function(CURL *h, mr_curl_debug_callback f) {
    return curl_easy_setopt(h, CURLOPT_DEBUGFUNCTION, f);
}
static inline CURLcode mr_curl_setopt_opensocket_function(CURL *h, curl_opensocket_callback f) {
    return curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, f);
}
static inline CURLcode mr_curl_getinfo_long(CURL *h, CURLINFO i, long *out) {
    return curl_easy_getinfo(h, i, out);
}
static inline CURLcode mr_curl_getinfo_socket(CURL *h, curl_socket_t *out) {
    return curl_easy_getinfo(h, CURLINFO_ACTIVESOCKET, out);
}

static inline CURLcode mr_curl_setopt_share(CURL *h, CURLSH *share) {
    return curl_easy_setopt(h, CURLOPT_SHARE, share);
}

// The multi interface. curl_multi_poll, _wakeup, _perform, _info_read, _add_handle and
// _remove_handle are not variadic and import as they are.
/// The CURLcode of a CURLMSG_DONE message (a union member Swift sees awkwardly).
static inline CURLcode mr_curl_msg_result(const CURLMsg *msg) {
    return msg->data.result;
}

// Share objects. A share with CURL_LOCK_DATA_CONNECT is a connection cache of its own: an
// easy handle that has it uses it instead of the multi handle's (lib/multi.c, 7.88).
static inline CURLSHcode mr_curl_share_connections(CURLSH *s) {
    return curl_share_setopt(s, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
}

#endif
