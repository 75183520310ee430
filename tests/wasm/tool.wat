;; A WASI (preview 1) test module for the wasm executor, in WAT text.
;; argv[1] picks what it does:
;;   hello            print to stdout and stderr, a checkpoint line, write /outputs/x
;;   copy SRC DST     copy /inputs/SRC to /outputs/DST (and print it)
;;   rw               try to create a file in /inputs: prints "inputs read-only" if refused
;;   env              print its environment, one variable a line
;;   loop             spin forever (only a timeout or a stop ends it)
;;   grow N           grow memory by N 64 KiB pages: exit 0 "grew", or exit 2 "grow refused"
;;   sleep MS         sleep MS milliseconds (WASI poll_oneoff on a clock), then print "slept"
;;   trap             execute `unreachable`
;;   exit             proc_exit(3)
;; The extra export "alt" is a second entry point: it prints "alt entry".
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; Layout: 0 iovec, 8 nwritten/nread, 12 opened fd, 16 argc, 20 argv size,
  ;; 64.. argv pointers, 1024.. argv strings, 8192.. a 64 KiB data buffer,
  ;; 120000.. constant strings.
  (data (i32.const 120000) "hello from wasm\n")          ;; 16
  (data (i32.const 120032) "to stderr\n")                ;; 10
  (data (i32.const 120048) "P2PNODE_CHECKPOINT 7\n")     ;; 21
  (data (i32.const 120080) "x")                          ;; 1
  (data (i32.const 120096) "written by wasm\n")          ;; 16
  (data (i32.const 120128) "inputs read-only\n")         ;; 17
  (data (i32.const 120160) "grew\n")                     ;; 5
  (data (i32.const 120176) "grow refused\n")             ;; 13
  (data (i32.const 120192) "alt entry\n")                ;; 10
  (data (i32.const 120208) "sneaky")                     ;; 6
  (data (i32.const 120224) "\n")                         ;; 1
  (data (i32.const 120240) "cannot open\n")              ;; 12
  (data (i32.const 120256) "slept\n")                    ;; 6

  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $strlen (param $ptr i32) (result i32)
    (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $ptr) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  (func $arg (param $i i32) (result i32)
    (i32.load (i32.add (i32.const 64) (i32.mul (local.get $i) (i32.const 4)))))

  ;; open path (ptr, len) under a preopened dir: the new fd, or -1
  (func $open (param $dir i32) (param $ptr i32) (param $len i32) (param $oflags i32)
              (param $rights i64) (result i32)
    (if (result i32)
      (call $path_open (local.get $dir) (i32.const 0) (local.get $ptr) (local.get $len)
        (local.get $oflags) (local.get $rights) (i64.const 0) (i32.const 0) (i32.const 12))
      (then (i32.const -1))
      (else (i32.load (i32.const 12)))))

  (func $hello
    (local $fd i32)
    (call $write (i32.const 1) (i32.const 120000) (i32.const 16))
    (call $write (i32.const 2) (i32.const 120032) (i32.const 10))
    (call $write (i32.const 1) (i32.const 120048) (i32.const 21))
    ;; /outputs is fd 4: O_CREAT|O_TRUNC, rights fd_write
    (local.set $fd (call $open (i32.const 4) (i32.const 120080) (i32.const 1)
      (i32.const 9) (i64.const 64)))
    (if (i32.lt_s (local.get $fd) (i32.const 0))
      (then (call $write (i32.const 2) (i32.const 120240) (i32.const 12)) (call $proc_exit (i32.const 1))))
    (call $write (local.get $fd) (i32.const 120096) (i32.const 16)))

  (func $copy
    (local $in i32) (local $out i32) (local $n i32)
    (local.set $in (call $open (i32.const 3) (call $arg (i32.const 2))
      (call $strlen (call $arg (i32.const 2))) (i32.const 0) (i64.const 2)))
    (if (i32.lt_s (local.get $in) (i32.const 0))
      (then (call $write (i32.const 2) (i32.const 120240) (i32.const 12)) (call $proc_exit (i32.const 1))))
    (local.set $out (call $open (i32.const 4) (call $arg (i32.const 3))
      (call $strlen (call $arg (i32.const 3))) (i32.const 9) (i64.const 64)))
    (if (i32.lt_s (local.get $out) (i32.const 0))
      (then (call $write (i32.const 2) (i32.const 120240) (i32.const 12)) (call $proc_exit (i32.const 1))))
    (block $eof
      (loop $more
        (i32.store (i32.const 0) (i32.const 8192))
        (i32.store (i32.const 4) (i32.const 65536))
        (drop (call $fd_read (local.get $in) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $n)))
        (call $write (local.get $out) (i32.const 8192) (local.get $n))
        (call $write (i32.const 1) (i32.const 8192) (local.get $n))
        (br $more))))

  (func $rw
    (if (i32.lt_s (call $open (i32.const 3) (i32.const 120208) (i32.const 6)
                    (i32.const 9) (i64.const 64)) (i32.const 0))
      (then (call $write (i32.const 1) (i32.const 120128) (i32.const 17)))
      (else (call $proc_exit (i32.const 1)))))

  (func $env
    (local $count i32) (local $i i32) (local $p i32)
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (local.set $count (i32.load (i32.const 16)))
    (drop (call $environ_get (i32.const 64) (i32.const 8192)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $p (call $arg (local.get $i)))
        (call $write (i32.const 1) (local.get $p) (call $strlen (local.get $p)))
        (call $write (i32.const 1) (i32.const 120224) (i32.const 1))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))

  ;; decimal argv[2]
  (func $number (result i32)
    (local $p i32) (local $c i32) (local $n i32)
    (local.set $p (call $arg (i32.const 2)))
    (block $done
      (loop $digit
        (local.set $c (i32.load8_u (local.get $p)))
        (br_if $done (i32.eqz (local.get $c)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10))
                               (i32.sub (local.get $c) (i32.const 48))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digit)))
    (local.get $n))

  ;; one clock subscription at 8192 (48 bytes): userdata, tag 0 = clock, clock id 1
  ;; (monotonic), relative timeout in ns; its event goes to 8256, the count to 8
  (func $sleep
    (i64.store (i32.const 8192) (i64.const 7))
    (i32.store8 (i32.const 8200) (i32.const 0))
    (i32.store (i32.const 8208) (i32.const 1))
    (i64.store (i32.const 8216) (i64.mul (i64.extend_i32_u (call $number)) (i64.const 1000000)))
    (i64.store (i32.const 8224) (i64.const 0))
    (i32.store16 (i32.const 8232) (i32.const 0))
    (if (call $poll_oneoff (i32.const 8192) (i32.const 8256) (i32.const 1) (i32.const 8))
      (then (call $proc_exit (i32.const 1))))
    (call $write (i32.const 1) (i32.const 120256) (i32.const 6)))

  (func $grow
    (if (i32.eq (memory.grow (call $number)) (i32.const -1))
      (then (call $write (i32.const 1) (i32.const 120176) (i32.const 13))
            (call $proc_exit (i32.const 2)))
      (else (call $write (i32.const 1) (i32.const 120160) (i32.const 5)))))

  (func (export "_start")
    (local $mode i32)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 64) (i32.const 1024)))
    (if (i32.lt_u (i32.load (i32.const 16)) (i32.const 2))
      (then (call $hello) (return)))
    (local.set $mode (i32.load8_u (call $arg (i32.const 1))))
    (if (i32.eq (local.get $mode) (i32.const 104)) (then (call $hello) (return)))   ;; h
    (if (i32.eq (local.get $mode) (i32.const 99)) (then (call $copy) (return)))     ;; c
    (if (i32.eq (local.get $mode) (i32.const 114)) (then (call $rw) (return)))      ;; r
    (if (i32.eq (local.get $mode) (i32.const 118)) (then (call $env) (return)))     ;; v
    (if (i32.eq (local.get $mode) (i32.const 101))                                  ;; e
      (then
        (if (i32.eq (i32.load8_u (i32.add (call $arg (i32.const 1)) (i32.const 1))) (i32.const 110))
          (then (call $env) (return)))                                              ;; en(v)
        (call $proc_exit (i32.const 3))))
    (if (i32.eq (local.get $mode) (i32.const 108)) (then (loop $forever (br $forever))))  ;; l
    (if (i32.eq (local.get $mode) (i32.const 103)) (then (call $grow) (return)))    ;; g
    (if (i32.eq (local.get $mode) (i32.const 116)) (then unreachable))              ;; t
    (if (i32.eq (local.get $mode) (i32.const 115)) (then (call $sleep) (return)))   ;; s
    (call $proc_exit (i32.const 64)))

  (func (export "alt")
    (call $write (i32.const 1) (i32.const 120192) (i32.const 10))))
