// The command lines of the test servers: a man-page-like --help (the description carries NAME,
// SYNOPSIS and DESCRIPTION, CLI11 the OPTIONS, the footer EXIT STATUS and EXAMPLES) and the
// exit statuses every server shares (0 after --help, 2 for a bad command line).
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace vpipe::apps {

// Man-style help for `app` (made with the description and the program name).
void man_style(CLI::App* app, const char* footer, size_t column_width);

// --mode, required, one of `modes` ("data path: rw, splice or vpipe").
void add_mode_option(CLI::App* app, std::string* mode, const std::vector<std::string>& modes);

// --bind ADDR (default shown), the address to listen on.
void add_bind_option(CLI::App* app, std::string* bind);

// Parses the command line. -1: go on; else exit with that status (CLI11 printed the help or
// the message).
int parse_command_line(CLI::App* app, int argc, char** argv);

}  // namespace vpipe::apps
