// The files vpipe-httpd serves and stores: opened below --root only (openat2 RESOLVE_BENEATH:
// no `..`, no symlink leading out), regular files only, blocking descriptors.
#pragma once

#include <sys/stat.h>

#include <string>

namespace vpipe::httpd {

// GET/HEAD: *file open for reading, *sb its status. 0, or the HTTP status to answer.
int open_for_get(const std::string& rel, int* file, struct stat* sb);

// PUT: *file open for writing and empty (*created: it did not exist). 0, or the HTTP status.
int open_for_put(const std::string& rel, int* file, bool* created);

}  // namespace vpipe::httpd
