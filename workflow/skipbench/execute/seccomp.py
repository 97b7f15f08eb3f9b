"""A seccomp filter for the sandbox, as a classic BPF program for `bwrap --seccomp FD`.

Hand-assembled (no libseccomp needed): check the architecture, then refuse a deny-list of
syscalls with EPERM and allow the rest. Denied: kernel attack surface no test needs
(io_uring, bpf, perf_event_open, keyrings, userfaultfd), reaching other processes
(ptrace, process_vm_*), namespaces and mounts (unshare, setns, mount and the new mount
API, pivot_root, chroot), module and kexec loading, host-wide or uncounted kernel
resources (Linux AIO: io_setup takes from the host-wide aio-max-nr; SysV shared memory,
message queues and semaphores, POSIX message queues, memfd_create: memory outside every
tmpfs and RLIMIT_AS). `socket` is allowed for AF_UNIX only: the network namespace has no
interface, but families such as AF_VSOCK reach past namespaces. Syscalls of a foreign
ABI (x32 on x86_64, i386 via int 0x80, where socketcall and ipc live) kill the process.

Numbers: Linux `arch/x86/entry/syscalls/syscall_64.tbl` and
`include/uapi/asm-generic/unistd.h` (aarch64).
"""

from __future__ import annotations

import platform
import struct

DENIED = (
    "io_uring_setup io_uring_enter io_uring_register keyctl add_key request_key ptrace bpf "
    "perf_event_open mount umount2 unshare setns pivot_root chroot process_vm_readv "
    "process_vm_writev kexec_load kexec_file_load init_module finit_module delete_module "
    "userfaultfd open_tree move_mount fsopen fsconfig fsmount fspick shmget shmat shmctl "
    "memfd_create io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents msgget msgsnd msgrcv "
    "msgctl semget semop semctl semtimedop mq_open"
).split()
AF_UNIX = 1  # the only socket family allowed

_X86_64 = dict(
    io_uring_setup=425, io_uring_enter=426, io_uring_register=427, keyctl=250, add_key=248,
    request_key=249, ptrace=101, bpf=321, perf_event_open=298, mount=165, umount2=166,
    unshare=272, setns=308, pivot_root=155, chroot=161, process_vm_readv=310,
    process_vm_writev=311, kexec_load=246, kexec_file_load=320, init_module=175,
    finit_module=313, delete_module=176, userfaultfd=323, open_tree=428, move_mount=429,
    fsopen=430, fsconfig=431, fsmount=432, fspick=433, shmget=29, shmat=30, shmctl=31,
    memfd_create=319, io_setup=206, io_destroy=207, io_getevents=208, io_submit=209, io_cancel=210,
    io_pgetevents=333, msgget=68, msgsnd=69, msgrcv=70, msgctl=71, semget=64, semop=65, semctl=66,
    semtimedop=220, mq_open=240, socket=41,
)  # fmt: skip
_AARCH64 = dict(
    io_uring_setup=425, io_uring_enter=426, io_uring_register=427, keyctl=219, add_key=217,
    request_key=218, ptrace=117, bpf=280, perf_event_open=241, mount=40, umount2=39,
    unshare=97, setns=268, pivot_root=41, chroot=51, process_vm_readv=270,
    process_vm_writev=271, kexec_load=104, kexec_file_load=294, init_module=105,
    finit_module=273, delete_module=106, userfaultfd=282, open_tree=428, move_mount=429,
    fsopen=430, fsconfig=431, fsmount=432, fspick=433, shmget=194, shmat=196, shmctl=195,
    memfd_create=279, io_setup=0, io_destroy=1, io_submit=2, io_cancel=3, io_getevents=4,
    io_pgetevents=292, msgget=186, msgctl=187, msgrcv=188, msgsnd=189, semget=190, semctl=191,
    semtimedop=192, semop=193, mq_open=180, socket=198,
)  # fmt: skip
# machine -> (AUDIT_ARCH_*, syscall numbers, lowest number of a foreign ABI sharing the arch)
ARCHES = {"x86_64": (0xC000003E, _X86_64, 0x40000000), "aarch64": (0xC00000B7, _AARCH64, None)}

_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_KILL, _RET_EPERM = 0x7FFF0000, 0x80000000, 0x00050000 | 1


def syscall_numbers(machine: str | None = None) -> dict[str, int]:
    return ARCHES[machine or platform.machine()][1]


def supported(machine: str | None = None) -> bool:
    return (machine or platform.machine()) in ARCHES


def program(machine: str | None = None) -> bytes:
    """The filter as `struct sock_filter[]` bytes (native little-endian layout)."""
    arch, numbers, foreign = ARCHES[machine or platform.machine()]
    nrs = sorted({numbers[name] for name in DENIED})
    ins = [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ_K, 1, 0, arch),
        (_RET_K, 0, 0, _RET_KILL),
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if foreign is not None:
        ins += [(_JGE_K, 0, 1, foreign), (_RET_K, 0, 0, _RET_KILL)]
    # socket(domain, ...): AF_UNIX jumps over the deny-list to ALLOW, any other domain to EPERM.
    ins += [
        (_JEQ_K, 0, 2, numbers["socket"]),
        (_LD_W_ABS, 0, 0, 16),  # seccomp_data.args[0], low half (little-endian)
        (_JEQ_K, len(nrs), len(nrs) + 1, AF_UNIX),
    ]
    # Each JEQ jumps over the remaining JEQs and the ALLOW to the EPERM return.
    for k, nr in enumerate(nrs):
        ins.append((_JEQ_K, len(nrs) - k, 0, nr))
    ins += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_EPERM)]
    return b"".join(struct.pack("<HBBI", *i) for i in ins)
