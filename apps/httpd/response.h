// Response heads of vpipe-httpd.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <string>

namespace vpipe::httpd {

// "Not Found" for 404, and so on.
const char* reason_phrase(int status);

// A complete short answer (a text/plain body "STATUS REASON\n" unless head_only). `extra`: more
// header lines, each ending in CRLF.
std::string simple_response(int status, const char* extra, bool close, bool head_only);

// The head of a 200 (whole file) or 206 (bytes start..start+len-1 of size) answer.
struct FileHead {
    int status = 200;
    uint64_t size = 0, start = 0, len = 0;
    time_t mtime = 0;
    bool keep = true;
    bool http10 = false;  // HTTP/1.0 keep-alive is said explicitly
};
std::string file_response_head(const FileHead& f);

// The answer to a PUT: 201 Created or 204 No Content.
std::string put_response(bool created, bool keep);

}  // namespace vpipe::httpd
