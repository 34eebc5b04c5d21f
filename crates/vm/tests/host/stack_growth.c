/* The host kernel's side of tests/stack_growth.rs: runs a script of
 * fixed mappings and accesses in an arena of this process, and prints the
 * result of each access and the arena's /proc/self/maps lines after it.
 *
 * Usage: stack_growth ARENA_HEX OP...; each OP is one argument:
 *   m:PAGE:NPAGES:PROT:G   mmap(arena + PAGE*4096, NPAGES pages, PROT one
 *                          of r, rw, n; G is g for MAP_GROWSDOWN, - not),
 *                          MAP_FIXED_NOREPLACE, private anonymous
 *   u:PAGE:NPAGES          munmap(arena + PAGE*4096, NPAGES pages)
 *   p:PAGE:NPAGES:PROT     mprotect(arena + PAGE*4096, NPAGES pages, PROT)
 *   w:OFF / r:OFF          write / read the 8-byte word at arena + OFF
 *   l:BYTES                setrlimit(RLIMIT_STACK) soft limit to BYTES
 * Output, per OP: "op ok" | "op maperr" | "op accerr" | "op errno N",
 * then "map START END PERMS VMFLAGS" for each VMA in the arena (offsets in
 * pages from the arena; VMFLAGS is smaps' line, words joined by commas),
 * then "end". A fault is caught with a SIGSEGV
 * handler and sigsetjmp, so the script goes on after it. */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static sigjmp_buf env;
static volatile int code;
static unsigned long arena;
static const unsigned long ARENA_LEN = 1UL << 32;

static void on_segv(int sig, siginfo_t *si, void *ctx) {
	(void)sig;
	(void)ctx;
	code = si->si_code;
	siglongjmp(env, 1);
}

static void dump(void) {
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int in_arena = 0;
	while (f && fgets(line, sizeof line, f)) {
		unsigned long s, e;
		char perms[8];
		if (sscanf(line, "%lx-%lx %7s", &s, &e, perms) == 3) {
			in_arena = s >= arena && s < arena + ARENA_LEN;
			if (in_arena)
				printf("map %lu %lu %s ", (s - arena) >> 12, (e - arena) >> 12, perms);
		} else if (in_arena && !strncmp(line, "VmFlags:", 8)) {
			char *w = line + 8;
			int first = 1;
			for (char *t = strtok(w, " \n"); t; t = strtok(NULL, " \n")) {
				printf(first ? "%s" : ",%s", t);
				first = 0;
			}
			printf("\n");
		}
	}
	if (f)
		fclose(f);
	printf("end\n");
	fflush(stdout);
}

int main(int argc, char **argv) {
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_segv;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigaction(SIGSEGV, &sa, NULL);
	arena = strtoul(argv[1], NULL, 16);
	for (int i = 2; i < argc; i++) {
		char *op = argv[i];
		if (op[0] == 'm') {
			unsigned long page, n;
			char prot[4], g;
			if (sscanf(op, "m:%lu:%lu:%3[^:]:%c", &page, &n, prot, &g) != 4)
				return 2;
			int p = !strcmp(prot, "r") ? PROT_READ : !strcmp(prot, "rw") ? PROT_READ | PROT_WRITE : PROT_NONE;
			int fl = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | (g == 'g' ? MAP_GROWSDOWN : 0);
			void *want = (void *)(arena + (page << 12));
			void *got = mmap(want, n << 12, p, fl, -1, 0);
			if (got == MAP_FAILED)
				printf("op errno %d\n", errno);
			else if (got != want)
				printf("op misplaced\n");
			else
				printf("op ok\n");
		} else if (op[0] == 'p') {
			unsigned long page, n;
			char prot[4];
			if (sscanf(op, "p:%lu:%lu:%3s", &page, &n, prot) != 3)
				return 2;
			int p = !strcmp(prot, "r") ? PROT_READ : !strcmp(prot, "rw") ? PROT_READ | PROT_WRITE : PROT_NONE;
			printf(mprotect((void *)(arena + (page << 12)), n << 12, p) ? "op errno %d\n" : "op ok\n", errno);
		} else if (op[0] == 'u') {
			unsigned long page, n;
			if (sscanf(op, "u:%lu:%lu", &page, &n) != 2)
				return 2;
			printf(munmap((void *)(arena + (page << 12)), n << 12) ? "op errno %d\n" : "op ok\n", errno);
		} else if (op[0] == 'l') {
			struct rlimit r;
			getrlimit(RLIMIT_STACK, &r);
			r.rlim_cur = strtoul(op + 2, NULL, 10);
			printf(setrlimit(RLIMIT_STACK, &r) ? "op errno %d\n" : "op ok\n", errno);
		} else {
			volatile unsigned long *a = (volatile unsigned long *)(arena + strtoul(op + 2, NULL, 10));
			if (sigsetjmp(env, 1) == 0) {
				if (op[0] == 'w')
					*a = 1;
				else
					(void)*a;
				printf("op ok\n");
			} else {
				printf(code == SEGV_MAPERR ? "op maperr\n" : code == SEGV_ACCERR ? "op accerr\n" : "op code %d\n", code);
			}
		}
		dump();
	}
	return 0;
}
