// Log lines of the test servers, all on stderr, each written in one call so that connection
// threads do not interleave them.
#pragma once

#include <chrono>
#include <string>

namespace vpipe::apps {

// The program name in log lines ("vpipe-httpd"); main sets it first.
void set_program(const char* name);
const char* program();

// The time field that starts a log line: 2025-01-31T12:00:00.123Z (UTC).
std::string now_text();

// " ms=12.3": the milliseconds since t0, the last field of a request or connection line.
std::string ms_since(std::chrono::steady_clock::time_point t0);

// "TIME PROGRAM: MESSAGE": an event while serving (listening, stopping, a failed vPipe call).
void log_event(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// "PROGRAM: MESSAGE": a failure outside of serving (a bad argument, bind, accept).
void log_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// A complete line as it is (it ends in a newline).
void log_line(const std::string& line);

}  // namespace vpipe::apps
