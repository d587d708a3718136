#!/usr/bin/env python3
"""Group a `perf record` profile's self time by what the code does.

    perf record -e cpu-clock -F 2000 -p PID -o perf.data -- sleep 5
    python3 bench/profile/perfgroup.py perf.data [--us-per-cycle US] [--others]

Reads `perf report --no-children --sort dso,sym --stdio` and sorts each symbol
into one group by its name (kernel TCP/IP, scheduler, slab, syscall entry,
epoll, timers, other kernel; everything outside the kernel is user space).
With --us-per-cycle (the proxy CPU µs per cycle measured alongside), also prints µs
per cycle per group; --others lists the symbols left in "other kernel". Used for issue 19's "where the kernel time goes" tables.
"""
import re
import subprocess
import sys

GROUPS = [
    ("kernel TCP/IP and socket layer", re.compile(
        r"^(__)?(tcp|ip|ipv4|ipv6|inet|sock|sk|skb|kfree_skb|consume_skb|napi|net|netif|"
        r"dev|loopback|__dev|release_sock|lock_sock|__release_sock|raw_|nf_|csum|"
        r"__skb|skb_|__sk|__sock|sock_|__inet|__tcp|__ip|dst_|fib|validate_xmit|"
        r"process_backlog|__napi|__netif|__sys_(connect|accept|socket|sendto|recvfrom|"
        r"shutdown|setsockopt|getsockopt|getsockname)|do_tcp|security_sock|"
        r"security_socket|bpf_|__cgroup_bpf|sk_|reqsk|inet_csk|__inet_csk|move_addr|"
        r"bbr_|eth_|local_bh|do_softirq|handle_softirqs|xfrm|__xfrm|_raw_spin_unlock_bh)")),
    ("scheduler and wake-ups", re.compile(
        r"^(__)?(schedule|finish_task_switch|try_to_wake_up|ttwu|futex|__futex|"
        r"enqueue|dequeue|update_|select_task_rq|psi_|pick_next|set_next|put_prev|"
        r"__switch_to|switch_mm|_raw_spin_unlock_irqrestore|pv_|native_queued|"
        r"__wake_up|wake_up|autoremove_wake|default_wake|check_preempt|resched|"
        r"account_|cpuacct|__update|sched_|task_tick|__schedule|prepare_task|"
        r"raw_spin_rq|newidle|load_balance|idle)")),
    ("slab and page allocation", re.compile(
        r"^(__)?(kmem_cache|kfree|kmalloc|__kmalloc|slab|___slab|page_|alloc_pages|"
        r"__alloc|free_|memcg|obj_cgroup|refill_obj|mod_objcg|__mod_|rmqueue|"
        r"get_page_from_freelist|__free|kvfree|kvmalloc|__kmem)")),
    ("syscall entry/exit, fd table, user copies", re.compile(
        r"^(__)?(entry_SYSCALL|syscall|do_syscall|x64_sys|__x64_sys|fdget|__fget|"
        r"fput|__fput|copy_to_user|copy_from_user|_copy|rep_movs|clear_user|"
        r"exit_to_user|syscall_exit|alloc_fd|__alloc_fd|fd_install|close_fd|"
        r"filp_close|file_close|__close_fd|task_work|get_unused_fd|__fdget|"
        r"do_sys|ksys|__sys|sockfd_lookup|import_single_range|_raw_spin_lock|"
        r"audit|rcu_|__rcu|fsnotify|security_file|apparmor|d_alloc|alloc_file|"
        r"dput|__dentry|iput|new_inode|sock_alloc_file|alloc_empty_file|inode_|init_file|"
        r"file_init|hook_file|__check_object_size|eventpoll_release|xa_|xas_)")),
    ("epoll", re.compile(r"^(__)?(ep_|epoll|do_epoll|__ep)")),
    ("timers", re.compile(r"^(__)?(hrtimer|timer|mod_timer|__mod_timer|lock_timer|"
                          r"run_timer|del_timer|sk_reset_timer|tcp_.*timer|ktime|"
                          r"clockevents|tick_)")),
]


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    data = sys.argv[1]
    us = None
    if "--us-per-cycle" in sys.argv:
        us = float(sys.argv[sys.argv.index("--us-per-cycle") + 1])
    out = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio",
         "--percent-limit", "0"],
        capture_output=True, text=True, check=True).stdout
    totals = {}
    others = []
    samples = None
    for line in out.splitlines():
        m = re.match(r"# Samples: (\S+)", line)
        if m:
            samples = m.group(1)
        # "    12.34%  [kernel.kallsyms]  [k] tcp_sendmsg"
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$", line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
        if kind != "k":
            group = "user space (kumoproxy, tokio, libc, Lua)"
        else:
            group = next((g for g, rx in GROUPS if rx.match(sym)), "other kernel")
        totals[group] = totals.get(group, 0.0) + pct
        if group == "other kernel":
            others.append((pct, sym))
    print(f"samples: {samples}")
    order = ["user space (kumoproxy, tokio, libc, Lua)"] + [g for g, _ in GROUPS] + ["other kernel"]
    for g in order:
        if g in totals:
            extra = f"  {totals[g] / 100 * us:6.1f} µs/cycle" if us else ""
            print(f"{totals[g]:6.1f}%  {g}{extra}")
    if "--others" in sys.argv:
        for pct, sym in sorted(others, reverse=True)[:25]:
            print(f"    {pct:5.2f}%  {sym}")


if __name__ == "__main__":
    main()
