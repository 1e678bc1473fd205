# patches/pound/check.sh --net lab: inserted into a copy of Pound's tests/poundharness.pl (after
# its `use Socket;`), so that its clients and backends are in other lab namespaces than Pound,
# and so that its backends' response bodies reach Pound after their heads.
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

# vpipe_split_body(FH): called by the harness's backend between a response's head and its body.
# With VPIPE_CHECK_SPLIT_MS=N (N > 0) it sends the head (flush) and waits N ms, so that Pound's
# first read returns the head alone and the body is still in the socket when Pound relays it:
# the body is then handed over (otherwise head and body arrive together, the body is already in
# Pound's 4 KiB buffer and Pound relays it itself). Only the timing changes, not the bytes.
sub vpipe_split_body {
    my ($fh) = @_;
    my $ms = $ENV{VPIPE_CHECK_SPLIT_MS} // 0;
    return unless $ms > 0;
    $fh->flush if defined $fh;
    select(undef, undef, undef, $ms / 1000);
}

# The same for the harness's client: HTTP::Tiny writes a request's head with syswrite, then its
# body (write_body); the wait goes between the two.
{
    require HTTP::Tiny;
    no warnings 'redefine';
    my $write_body = \&HTTP::Tiny::Handle::write_body;
    *HTTP::Tiny::Handle::write_body = sub { vpipe_split_body(undef); return $write_body->(@_); };
}
