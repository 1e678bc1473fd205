// nft::Link: nftables transactions on a netlink socket kept open, built with libnftnl.
//
// Both sides change per-flow set / map elements on every hand-over (the guest's flow block
// twice, dom0's steering twice). libnftables parses text and re-reads the ruleset on each call
// (~0.5 ms); one nfnetlink batch on an open socket takes ~20 us. Tables, chains and rules that
// nft's text language can express are still created with libnftables, once; Link carries the
// per-flow changes and the rules text cannot express (an xtables target through nft_compat).
//
// One Batch is one transaction: all its messages apply, or none (the kernel aborts the batch
// on the first error). A Link works in the network namespace of the thread that opened it. Not
// thread-safe: one caller at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

struct mnl_socket;
struct nftnl_batch;
struct nftnl_rule;

namespace vpipe::nft {

// One element: the key's bytes as the set stores them (each concatenated field padded to 4
// bytes), and for a map the value's.
struct Element {
    std::vector<uint8_t> key;
    std::vector<uint8_t> data;  // empty for a plain set
};

class Batch {
public:
    Batch();
    ~Batch();
    Batch(const Batch&) = delete;
    Batch& operator=(const Batch&) = delete;

    // family: NFPROTO_* of the table. `exclusive`: -EEXIST if an element exists (nft's
    // `create element`), otherwise adding an existing element succeeds.
    void add_elements(uint8_t family, const std::string& table, const std::string& set,
                      std::span<const Element> elems, bool exclusive = false);
    void delete_elements(uint8_t family, const std::string& table, const std::string& set,
                         std::span<const Element> elems);
    // appends the rule (table, chain and family set in it); takes ownership
    void add_rule(nftnl_rule* rule);
    size_t messages() const { return msgs_; }

private:
    friend class Link;
    void elements(uint16_t type, uint16_t flags, uint8_t family, const std::string& table,
                  const std::string& set, std::span<const Element> elems);
    void close(uint32_t seq);  // writes BEGIN (at the front, seq_base) ... END

    nftnl_batch* b_;
    uint32_t seq_base_ = 0;
    uint32_t next_seq_ = 0;
    size_t msgs_ = 0;
    bool closed_ = false;
};

class Link {
public:
    // A NETLINK_NETFILTER socket in the calling thread's namespace; nullptr (errno) on failure.
    static std::unique_ptr<Link> open();
    ~Link();
    Link(const Link&) = delete;
    Link& operator=(const Link&) = delete;

    // Sends the batch as one transaction and waits for its verdict: 0, or the first error
    // (-ENOENT for a missing element / table, -EEXIST, -EINVAL, ...), -ETIMEDOUT after 1 s.
    // A batch is committed once.
    int commit(Batch& b);

private:
    Link() = default;
    mnl_socket* nl_ = nullptr;
    unsigned portid_ = 0;
    uint32_t seq_ = 0;
    std::vector<uint8_t> rbuf_;
};

}  // namespace vpipe::nft
