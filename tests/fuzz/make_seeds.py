#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/ from valid
examples: one file per seed, deterministic, small. Run it again after an ABI change
(libvpipe/include/vpipe/abi/ring.h) and commit the result.

    tests/fuzz/make_seeds.py            # (re)writes tests/fuzz/corpus/
"""
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
PAGE = 4096

# --- the ring ABI (vpipe/abi/ring.h) -------------------------------------------------------
OP_NOP, OP_F2F, OP_F2S, OP_S2F, OP_S2S = 0, 1, 2, 3, 4
REQF_INDIRECT, REQF_PREPARING = 0x01, 0x02
MAGIC, VERSION, HDR = 0x31445056, 2, 272
EP_FILE, EP_SOCKET = 1, 2
VDEV_RW, VDEV_RO = 51712, 51728          # the disks fuzz_request's VM has
VM_IP, PEER_IP = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 9])


def request(op, length, pages, desc_bytes, flags=0, rid=1):
    refs = list(pages) + [0] * (10 - len(pages))
    return struct.pack("<QQBBBBI10I", rid, length, op, flags, len(pages), 0, desc_bytes, *refs)


def tcp(local_port, remote_port, sndq=0, rcvq=0, carry=0, unsent=0):
    return struct.pack("<BBBBHH16s16s14I", 4, 0x07, 7, 7, local_port, remote_port,
                       VM_IP + bytes(12), PEER_IP + bytes(12),
                       1000, 2000, 1460, 12345, 1000, 65535, 65535, 65535, 2000,
                       sndq, rcvq, carry, unsent, 0)


def file_ep(vdev, first, nr, prepared=0):
    return struct.pack("<6IQ", EP_FILE, vdev, first, nr, 0, 0, prepared) + bytes(96)


def sock_ep(t, tail=0):
    return struct.pack("<6IQ", EP_SOCKET, 0, 0, 0, 0, tail, 0) + t


def header(nr_segments, area_pages, src, dst):
    h = struct.pack("<IHHII", MAGIC, VERSION, HDR, nr_segments, area_pages) + src + dst
    assert len(h) == HDR
    return h


def seg(offset, length, flags=0):
    return struct.pack("<QIHH", offset, length, flags, 0)


def pages_of(*chunks):
    """Each chunk is one page's leading bytes; all but the last padded to a page."""
    out = b""
    for c in chunks[:-1]:
        out += c + bytes(PAGE - len(c))
    return out + chunks[-1]


def request_seeds():
    s = {}
    s["nop"] = request(OP_NOP, 0, [], 0, rid=7)
    d = header(2, 1, file_ep(VDEV_RW, 0, 1), file_ep(VDEV_RW, 1, 1)) + seg(0, 65536) + seg(1 << 20, 65536)
    s["file_to_file"] = request(OP_F2F, 65536, [0], len(d)) + d
    d = (header(3, 1, file_ep(VDEV_RO, 0, 2), file_ep(VDEV_RW, 2, 1))
         + seg(0, 4096, 1) + seg(8192, 4096) + seg(4096, 8192))
    s["file_to_file_zero"] = request(OP_F2F, 8192, [0], len(d)) + d
    d = header(1, 2, file_ep(VDEV_RO, 0, 1), sock_ep(tcp(80, 40000, 10, 0, PAGE, 10), 5)) + seg(4096, 8192)
    s["file_to_socket"] = request(OP_F2S, 8192, [0, 1], len(d)) + pages_of(d, b"q" * 10 + b"tail!")
    d = header(1, 2, sock_ep(tcp(8080, 40001, 0, 6, PAGE)), file_ep(VDEV_RW, 0, 1)) + seg(1 << 20, 4096)
    s["socket_to_file_preparing"] = (request(OP_S2F, 4096, [0, 1], len(d), REQF_PREPARING)
                                     + pages_of(d, b"rcvq!!"))
    d = header(0, 3, sock_ep(tcp(8080, 40002, 3, 4, PAGE)), sock_ep(tcp(9090, 40003, 0, 0, 2 * PAGE), 2))
    s["socket_to_socket"] = request(OP_S2S, 1 << 20, [0, 1, 2], len(d)) + pages_of(d, b"abcdefg", b"zz")
    # indirect: page 0 lists 11 area pages (all page 1, where the stream is)
    d = header(2, 11, file_ep(VDEV_RW, 0, 1), file_ep(VDEV_RW, 1, 1)) + seg(0, 512) + seg(4096, 512)
    refs = struct.pack("<11I", *([1] * 11))
    s["indirect_file_to_file"] = request(OP_F2F, 512, [0], len(d), REQF_INDIRECT) + pages_of(refs, d)
    return s


# --- fuzz_ring: 4-byte start index, then operations (see fuzz_ring.cpp) --------------------
def ring_seeds():
    def slot(i, rid):
        return bytes([2, i]) + request(OP_NOP, 0, [], 0, rid=rid)
    s = {}
    body = b"".join(slot(i, i + 1) for i in range(4))
    s["publish_take_answer"] = struct.pack("<I", 0) + body + bytes([0, 4, 3, 4, 4, 3])
    s["wrap"] = struct.pack("<I", 0xFFFFFFFE) + body + bytes([0, 4, 3, 4, 2, 0, 3, 3])
    s["full_then_stall"] = struct.pack("<I", 100) + bytes([0, 32, 3, 0, 1, 3, 4, 1, 3])
    s["backwards"] = struct.pack("<I", 0) + bytes([0, 10, 3, 0, 0xFB, 3])   # +10, take, -5, take
    s["wild"] = struct.pack("<I", 5) + bytes([1]) + struct.pack("<I", 0x80000000) + bytes([3])
    return s


# --- fuzz_xenstore: "path=value" lines, domain 5 ------------------------------------------
def xenstore_seeds():
    tool = [
        "/local/domain/5/name=web",
        "/local/domain/5/domid=5",
        "/local/domain/0/backend/vbd/5/51712/params=/dev/vda",
        "/local/domain/0/backend/vbd/5/51712/mode=w",
        "/local/domain/0/backend/vbd/5/51728/params=/img/data.img",
        "/local/domain/0/backend/vbd/5/51728/mode=r",
        "/local/domain/0/backend/vif/5/0/ip=10.0.0.2 10.0.0.3/24",
        "/local/domain/0/backend/vif/5/0/mac=00:16:3e:00:00:02",
        "/local/domain/0/backend/vif/5/0/bridge=xenbr0",
        "/local/domain/1/name=other",
    ]
    front = [
        "/local/domain/5/device/vpipe/0/protocol-version=2",
        "/local/domain/5/device/vpipe/0/ring-ref=8",
        "/local/domain/5/device/vpipe/0/event-channel=17",
        "/local/domain/5/device/vpipe/0/state=3",
    ]
    return {
        "toolstack": "\n".join(tool).encode(),
        "toolstack_and_frontend": "\n".join(tool + front).encode(),
        "two_vifs": "\n".join(tool[:2] + ["/local/domain/0/backend/vif/5/0/mac=00:16:3e:00:00:01",
                                          "/local/domain/0/backend/vif/5/1/ip=192.168.1.5"] + front).encode(),
        "decimal": b"4294967295\n/local/domain/5/name=x",
    }


def control_seeds():
    return {
        "ping": bytes([255]) + b'{"cmd":"ping"}\n',
        "session": bytes([7]) + b'{"cmd":"stats"}\n{"cmd":"set-weight","vm":"vm1","weight":3}\n'
                   b'{"cmd":"set-weight","vm":2,"weight":0}\n{"cmd":"nope"}\n',
        "bad_utf8": bytes([0]) + b'{"cmd":"\xff\xfe"}\n\xc3\n',
        "not_object": bytes([3]) + b'5\n[1,2]\n"x"\n',
    }


def engine_config_seeds():
    lab = """# as vpipe-lab writes it
[engine]
control_socket = "/run/vpipe-lab/vpiped.ctl"
pool_pages = 16384
queue_depth = 32
log_level = "info"
total_rate_mbps = 900

[[vm]]
name = "vm1"
id = 1
weight = 2
threads = 4
channel = "/run/vpipe-lab/vm1/engine.sock"
ip = "10.199.0.11"
mac = "02:00:00:00:00:01"
vif = "vif1.0"
bridge = "xenbr0"
[[vm.disk]]
vdev = 51712
image = "/var/tmp/vm1-disk0.img"
writable = true
cache = "host"
[[vm.disk]]
vdev = 51728
image = "/var/tmp/vm1-disk1.img"
writable = false
"""
    xen = """[engine]
fairness = "strict"
tick_ms = 20
metrics_listen = "0.0.0.0:9477"
disk_rate_mbps = 4000
[xen]
enabled = true
weight = 1
threads = 4
[xen.vm.web1]
weight = 3
threads = 8
"""
    return {"lab": lab.encode(), "xen": xen.encode(), "float": b"[engine]\npool_pages = 1e300\n"}


def agent_config_seeds():
    lab = """# as vpipe-lab writes it
[agent]
vm = "vm1"
listen = "/run/vpipe-lab/vm1/agent.sock"
engine_channel = "/run/vpipe-lab/vm1/engine.sock"
state_dir = "/run/vpipe-lab/vm1/agent-state"
area_pages = 4096
log_level = "info"

[[disk]]
vdev = 51712
device = "/dev/loop0"

[[disk]]
vdev = 51728
device = "/dev/loop1"
"""
    full = """[agent]
engine_channel = "/e"
chunk_mib = 16
room_kib = 1024
cache_rule_file_to_file = true
cache_rule_file_to_socket = false
prepare_ahead = false
"""
    return {"lab": lab.encode(), "full": full.encode(), "float": b'[agent]\nengine_channel="/e"\narea_pages=-1e300\n'}


def main():
    targets = {
        "fuzz_request": request_seeds(),
        "fuzz_ring": ring_seeds(),
        "fuzz_xenstore": xenstore_seeds(),
        "fuzz_control": control_seeds(),
        "fuzz_engine_config": engine_config_seeds(),
        "fuzz_agent_config": agent_config_seeds(),
    }
    for target, seeds in targets.items():
        d = os.path.join(CORPUS, target)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
