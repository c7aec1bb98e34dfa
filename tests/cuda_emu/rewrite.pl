#!/usr/bin/perl
# tests/cuda_emu/rewrite.pl IN.cu OUT.cc: a kernels/cuda/ source as C++ for
# the cpu emulator (emu.h). Three rewrites, nothing else changes:
#   k<<<cfg>>>(args)            emu::launch("k", ptr, [=](auto... a) { k(a...); }, cfg)(args)
#                               (ptr: k's address, null for a template kernel
#                               launched without its arguments; the arguments
#                               are taken at launch)
#   extern __shared__ T name[]; T *name = (T *)emu::dynamic_smem();
#   asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));   t = emu::globaltimer();
# A launch or an asm statement it does not recognise is an error, so that a
# new construct fails the build rather than running as something else.
use strict;
use warnings;

my ($in, $out) = @ARGV;
die "usage: rewrite.pl IN.cu OUT.cc\n" unless defined $out;
open(my $fh, '<', $in) or die "rewrite.pl: $in: $!\n";
my $src = do { local $/; <$fh> };
close $fh;

# kernels that are templates: launched without their arguments, they have
# no address to take (the arguments are deduced at the call)
my %template_kernel;
while ($src =~ /template\s*<[^{;]*?>\s*(?:static\s+)?__global__\s+(?:void\s+)?(?:__launch_bounds__\([^)]*\)\s+)?(?:void\s+)?(\w+)\s*\(/g) {
    $template_kernel{$1} = 1;
}
$src =~ s{(\b[A-Za-z_]\w*(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\(}{
    my ($k, $cfg) = ($1, $2);
    my $ptr = $k =~ /</ ? "(const void *)&$k" : $template_kernel{$k} ? "nullptr" : "(const void *)$k";
    "emu::launch(\"$k\", $ptr, [=](auto... emu_a) { $k(emu_a...); }, $cfg)("
}gse;
die "rewrite.pl: $in: a launch it does not recognise\n" if $src =~ /<<</;

$src =~ s{extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([A-Za-z_][\w ]*?)\s+(\w+)\[\]\s*;}
         {$1 *$2 = ($1 *)emu::dynamic_smem();}g;
die "rewrite.pl: $in: an extern __shared__ it does not recognise\n" if $src =~ /extern\s+__shared__/;

$src =~ s{asm\s+volatile\s*\(\s*"mov\.u64 %0, %%globaltimer;"\s*:\s*"=l"\((\w+)\)\s*\)\s*;}
         {$1 = emu::globaltimer();}g;
die "rewrite.pl: $in: an asm statement it does not recognise\n" if $src =~ /\basm\b/;

open(my $oh, '>', $out) or die "rewrite.pl: $out: $!\n";
print $oh "#line 1 \"$in\"\n" . $src;
close $oh;
