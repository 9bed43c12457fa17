/* Prints a native backtrace on SIGSEGV (frames as object + offset, for addr2line), for crashes
 * inside libsparge_c.so called from Python, where faulthandler shows only Python frames and the
 * GPU image has no gdb.
 *   gcc -shared -fPIC -O1 -o /tmp/segv_bt.so bench/gpu/segv_bt.c -ldl
 *   LD_PRELOAD=/tmp/segv_bt.so python3 script.py      (faulthandler off)
 *   addr2line -f -C -i -e build/libsparge_c.so <offset>   (build with -g for lines) */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static void on_segv(int sig, siginfo_t* si, void* ctx) {
  void* frames[64];
  int n = backtrace(frames, 64);
  for (int i = 0; i < n; ++i) {
    Dl_info d;
    if (dladdr(frames[i], &d) && d.dli_fname)
      fprintf(stderr, "#%d %s %#lx %s\n", i, d.dli_fname,
              (unsigned long)((char*)frames[i] - (char*)d.dli_fbase), d.dli_sname ? d.dli_sname : "?");
    else
      fprintf(stderr, "#%d %p\n", i, frames[i]);
  }
  fprintf(stderr, "fault address %p\n", si->si_addr);
  _exit(139);
}
__attribute__((constructor)) static void install(void) {
  struct sigaction sa = {0};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &sa, 0);
}
