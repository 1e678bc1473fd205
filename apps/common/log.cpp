#include "common/log.h"

#include <cstdarg>
#include <cstdio>
#include <ctime>

namespace vpipe::apps {

namespace {
const char* g_program = "vpipe-app";

void vlog(bool with_time, const char* fmt, va_list ap) {
    char msg[1024];
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    std::string line = (with_time ? now_text() + " " : std::string()) + g_program + ": " + msg + "\n";
    log_line(line);
}
}  // namespace

void set_program(const char* name) { g_program = name; }
const char* program() { return g_program; }

std::string now_text() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    tm t{};
    gmtime_r(&ts.tv_sec, &t);
    char b[64];
    std::snprintf(b, sizeof b, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                  t.tm_hour, t.tm_min, t.tm_sec, ts.tv_nsec / 1000000);
    return b;
}

std::string ms_since(std::chrono::steady_clock::time_point t0) {
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    char b[32];
    std::snprintf(b, sizeof b, " ms=%.1f", ms);
    return b;
}

void log_event(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(true, fmt, ap);
    va_end(ap);
}

void log_error(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(false, fmt, ap);
    va_end(ap);
}

void log_line(const std::string& line) {
    std::fputs(line.c_str(), stderr);
    std::fflush(stderr);
}

}  // namespace vpipe::apps
