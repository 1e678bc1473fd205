#include "common/cli.h"

#include <memory>

namespace vpipe::apps {

namespace {

class ManFormatter : public CLI::Formatter {
public:
    explicit ManFormatter(size_t width) { column_width(width); }
    std::string make_usage(const CLI::App*, std::string) const override { return ""; }
    std::string make_description(const CLI::App* app) const override { return app->get_description() + "\n"; }
};

}  // namespace

void man_style(CLI::App* app, const char* footer, size_t column_width) {
    app->formatter(std::make_shared<ManFormatter>(column_width));
    app->footer(footer);
    app->option_defaults()->group("OPTIONS");
    app->set_help_flag("-h,--help", "print this help and exit");
}

void add_mode_option(CLI::App* app, std::string* mode, const std::vector<std::string>& modes) {
    std::string text = "data path: ";
    for (size_t i = 0; i < modes.size(); ++i) text += (i == 0 ? "" : i + 1 == modes.size() ? " or " : ", ") + modes[i];
    app->add_option("--mode", *mode, text)->required()->check(CLI::IsMember(modes));
}

void add_bind_option(CLI::App* app, std::string* bind) {
    app->add_option("--bind", *bind, "address to listen on")->capture_default_str();
}

int parse_command_line(CLI::App* app, int argc, char** argv) {
    try {
        app->parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app->exit(e) == 0 ? 0 : 2;
    }
    return -1;
}

}  // namespace vpipe::apps
