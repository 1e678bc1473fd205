# patches/lighttpd/check.sh: loaded at the end of the staged copy of lighttpd's tests/LightyTest.pm
# (check.sh adds the `do` line there), in the lab's client namespace. Upstream's harness starts
# lighttpd as its own child on a loopback socket it passes by socket activation, and connects to
# 127.0.0.1; vPipe only takes flows that arrive on the VM's interface. So, redefined here:
#   start_proc    lighttpd runs in the VM (`vpipe-lab exec VM -- lighttpd -D -f CONF`; exec, so
#                 the child is lighttpd itself and stop_proc's SIGTERM and waitpid reach it),
#                 listening on 0.0.0.0:PORT (the VM's address for the suite, loopback for the
#                 proxy test's backend) by tmp/bind.conf, which every test config includes, with
#                 server.vpipe as VPIPE_CHECK_VPIPE says;
#   listening_on  asks the VM's address.
# handle_http's host is VPIPE_CHECK_HOST (check.sh's sed). Environment (set by check.sh):
# VPIPE_CHECK_HOST (the VM's address), VPIPE_CHECK_LAB (vpipe-lab), VPIPE_CHECK_VM (vm1),
# VPIPE_CHECK_VPIPE (enable|disable).
package LightyTest;
use strict;
no warnings 'redefine';
use IO::Socket ();
use Test::More ();

for my $v (qw(VPIPE_CHECK_HOST VPIPE_CHECK_LAB VPIPE_CHECK_VM VPIPE_CHECK_VPIPE)) {
	die "check-lab.pl: $v is not set (run patches/lighttpd/check.sh)\n" unless $ENV{$v};
}

sub listening_on {
	my ($self, $port) = @_;
	my $s = IO::Socket::INET->new(Proto => 'tcp', PeerAddr => $ENV{VPIPE_CHECK_HOST},
	                              PeerPort => $port, Timeout => 1);
	return 0 unless $s;
	close $s;
	return 1;
}

sub start_proc {
	my $self = shift;
	# a port free here is free in the VM too: nothing but the suite's servers listens there
	$self->{PORT} = get_ephemeral_tcp_port();
	$ENV{'SRCDIR'} = $self->{BASEDIR}.'/tests';
	$ENV{'PORT'} = $self->{PORT};
	# read once by lighttpd at its start; the suite starts its servers one at a time
	my $conf;
	open($conf, '>', "$ENV{'SRCDIR'}/tmp/bind.conf") or die "check-lab.pl: bind.conf: $!";
	print $conf <<BIND;
server.systemd-socket-activation := "disable"
server.bind = "0.0.0.0"
server.port = $self->{PORT}
server.vpipe = "$ENV{VPIPE_CHECK_VPIPE}"
BIND
	close($conf) or die "check-lab.pl: bind.conf: $!";

	my @cmdline = ($ENV{VPIPE_CHECK_LAB}, 'exec', $ENV{VPIPE_CHECK_VM}, '--',
	               $self->{LIGHTTPD_PATH}, '-D', '-f', $self->{SRCDIR}.'/'.$self->{CONFIGFILE});
	my $child = fork();
	if (not defined $child) {
		Test::More::diag("\nFork failed");
		return -1;
	}
	if ($child == 0) {
		exec @cmdline or die "check-lab.pl: exec $cmdline[0]: $!";
	}
	if (0 != $self->wait_for_port_with_proc($self->{PORT}, $child)) {
		Test::More::diag(sprintf("\nlighttpd (pid %i) is not up in %s on %s:%i", $child,
		                         $ENV{VPIPE_CHECK_VM}, $ENV{VPIPE_CHECK_HOST}, $self->{PORT}));
		return -1;
	}
	$self->{LIGHTTPD_PID} = $child;
	return 0;
}

1;
