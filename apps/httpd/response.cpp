#include "response.h"

#include <ctime>

namespace vpipe::httpd {

namespace {

std::string http_date(time_t when) {
    tm t{};
    gmtime_r(&when, &t);
    char b[64];
    std::strftime(b, sizeof b, "%a, %d %b %Y %H:%M:%S GMT", &t);
    return b;
}

// "HTTP/1.1 STATUS REASON", Server and Date.
std::string status_lines(int status) {
    return "HTTP/1.1 " + std::to_string(status) + " " + reason_phrase(status) +
           "\r\nServer: vpipe-httpd\r\nDate: " + http_date(time(nullptr)) + "\r\n";
}

}  // namespace

const char* reason_phrase(int status) {
    switch (status) {
        case 200: return "OK";
        case 201: return "Created";
        case 204: return "No Content";
        case 206: return "Partial Content";
        case 400: return "Bad Request";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 411: return "Length Required";
        case 414: return "URI Too Long";
        case 416: return "Range Not Satisfiable";
        case 417: return "Expectation Failed";
        case 431: return "Request Header Fields Too Large";
        case 501: return "Not Implemented";
        case 505: return "HTTP Version Not Supported";
        case 507: return "Insufficient Storage";
        default: return "Internal Server Error";
    }
}

std::string simple_response(int status, const char* extra, bool close, bool head_only) {
    std::string body = std::to_string(status) + " " + reason_phrase(status) + "\n";
    std::string r = status_lines(status) + "Content-Type: text/plain\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n" + (extra ? extra : "") + (close ? "Connection: close\r\n" : "") +
                    "\r\n";
    if (!head_only) r += body;
    return r;
}

std::string file_response_head(const FileHead& f) {
    std::string h = status_lines(f.status) + "Last-Modified: " + http_date(f.mtime) +
                    "\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nContent-Length: " +
                    std::to_string(f.len) + "\r\n";
    if (f.status == 206)
        h += "Content-Range: bytes " + std::to_string(f.start) + "-" + std::to_string(f.start + f.len - 1) + "/" +
             std::to_string(f.size) + "\r\n";
    h += f.keep ? (f.http10 ? "Connection: keep-alive\r\n" : "") : "Connection: close\r\n";
    return h + "\r\n";
}

std::string put_response(bool created, bool keep) {
    return status_lines(created ? 201 : 204) + (created ? "Content-Length: 0\r\n" : "") +
           (keep ? "" : "Connection: close\r\n") + "\r\n";
}

}  // namespace vpipe::httpd
