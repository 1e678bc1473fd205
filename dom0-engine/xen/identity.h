// A Xen domain's identity as the engine needs it, read from the toolstack's xenstore nodes
// (docs/protocol.md 5e), and the frontend's handshake keys (5b). Pure parsing and validation
// over a StoreReader: unit-tested with an in-memory store.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config.h"
#include "store.h"

namespace vpipe::xen {

std::string domain_path(uint32_t domid);                  // /local/domain/<domid>
std::string frontend_path(uint32_t domid);                // /local/domain/<domid>/device/vpipe/0
std::string backend_path(uint32_t domid);                 // /local/domain/0/backend/vpipe/<domid>/0
std::string backend_domain_dir(uint32_t domid);           // /local/domain/0/backend/vpipe/<domid>

// Builds the VmConfig of domain `domid`: name, disks from vbd backends (vdev = devid, image =
// params, writable iff mode is "w"), address/mac/bridge from the first vif with a usable
// IPv4 address (else the first vif), weight and threads from `xen`. id = domid; no channel
// socket (the ring arrives through the xenbus handshake). Disks or vifs that cannot be used
// are skipped and explained in *warnings. false (and *why) when the domain itself is unusable
// (no such domain, domid 0).
bool vm_config_from_store(StoreReader& store, uint32_t domid, const engine::XenConfig& xen,
                          engine::VmConfig* out, std::vector<std::string>* warnings, std::string* why);

struct FrontendKeys {
    uint32_t ring_ref = 0;
    uint32_t event_channel = 0;
};

// Reads ring-ref, event-channel and protocol-version under the frontend directory `fe`.
// 0, -EPROTO (another protocol version) or -EINVAL (a key missing or not a number in range);
// *why says which key and what was wrong.
int read_frontend_keys(StoreReader& store, const std::string& fe, FrontendKeys* out, std::string* why);

// The frontend's "state": a XenbusState, or kUnknown when missing or not a valid state.
int read_state(StoreReader& store, const std::string& dir);

// The domids listed under /local/domain (numbers only; 0 included).
std::vector<uint32_t> list_domains(StoreReader& store);

}  // namespace vpipe::xen
