# patches/pound/check.sh --net lab: inserted into a copy of Pound's tests/poundharness.pl (after
# its `use Socket;`), so that its clients and backends are in other lab namespaces than Pound.
# vpipe_in_netns(NSFILE, CODE): runs CODE with the calling thread in the network namespace
# NSFILE (/run/netns/NAME; undef or empty: where it is), then returns the thread to its own.
# A socket stays in the namespace it was created in, so the harness's backend sockets live in
# vm2 and its client connections start from the client host. setns(2) with CLONE_NEWNET moves
# one thread only (the harness's other threads stay in vm1).
sub vpipe_in_netns {
    my ($ns, $code) = @_;
    return $code->() unless defined($ns) && $ns ne '';
    my $SYS_setns = 308;            # x86_64
    my $CLONE_NEWNET = 0x40000000;
    open(my $old, '<', '/proc/thread-self/ns/net') or die "/proc/thread-self/ns/net: $!";
    open(my $new, '<', $ns) or die "$ns: $!";
    syscall($SYS_setns, fileno($new), $CLONE_NEWNET) == 0 or die "setns($ns): $!";
    my @res = eval { $code->() };
    my $err = $@;
    syscall($SYS_setns, fileno($old), $CLONE_NEWNET) == 0 or die "setns back from $ns: $!";
    die $err if $err;
    return wantarray ? @res : $res[0];
}
