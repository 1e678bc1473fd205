#!/usr/bin/perl
# Used by patches/pound/check.sh --net lab: writes copies of some of Pound's test-suite files
# (tests/*.at) whose expectations name 127.0.0.1, with each 127.0.0.1 replaced by the lab address
# that endpoint has in the --net lab run. Only what a group *expects* (logged addresses, ACLs on
# the client's address, X-Forwarded-For, poundctl's listing) changes; the requests, bodies and
# checks stay upstream's. The endpoint is told by what precedes the address:
#   backend http … | -> … | %{backend}N=… | \(…\):PORT sed  the backend, in vm2's namespace
#   Listener http://… | %A=…                                  Pound's listener, vm1's address
#   anything else ("127.0.0.1" in an ACL, a log's client, X-Forwarded-For)  the client host
# 127.0.0.2, 127.0.0.17 and the like are not touched: the groups that choose those source
# addresses keep them in --net lab (the harness leaves them on vm1's lo).
#
# usage: lab-expectations.pl SRCDIR DSTDIR FILE.at...   (prints one "FILE: N" line per file;
# exit status 1 when a file has no address to replace: upstream's file changed)
use strict;
use warnings;

my %ip = (client => $ENV{VPIPE_CHECK_CLIENT_IP} // '10.199.0.1',
          listener => $ENV{VPIPE_CHECK_LISTEN_IP} // '10.199.0.11',
          backend => $ENV{VPIPE_CHECK_BACKEND_IP} // '10.199.0.12');

# 127.0.0.1 as written in a .at file: plain, or with each dot escaped for a regexp (\.)
my $lo = qr/127(\\?)\.0\g{-1}\.0\g{-1}\.1(?!\d)/;

# ADDR written with ESC before each dot (the escaping the replaced address had)
sub spell { my ($addr, $esc) = @_; return join("$esc.", split(/\./, $addr)); }

my ($src, $dst, @files) = @ARGV;
die "usage: $0 SRCDIR DSTDIR FILE.at...\n" unless defined $dst && @files;
my $rc = 0;
for my $f (@files) {
    open(my $in, '<', "$src/$f") or die "$src/$f: $!\n";
    local $/;
    my $t = <$in>;
    close $in;
    my $n = 0;
    $n += $t =~ s/(backend http |-> |%\{backend\}N=|\\\()$lo/$1 . spell($ip{backend}, $2)/ge;
    $n += $t =~ s/(Listener http:\/\/|%A=)$lo/$1 . spell($ip{listener}, $2)/ge;
    $n += $t =~ s/$lo/spell($ip{client}, $1)/ge;
    open(my $out, '>', "$dst/$f") or die "$dst/$f: $!\n";
    print $out $t;
    close $out;
    print "$f: $n\n";
    $rc = 1 if $n == 0;
}
exit $rc;
