;; A WASI (preview 1) module in WAT text: prints a line and writes
;; /outputs/hello.txt.  The wasm executor compiles WAT or binary .wasm alike.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello from wasm\n")   ;; 16 bytes
  (data (i32.const 96) "hello.txt")           ;; 9 bytes

  ;; write(fd, ptr, len) through one iovec at address 0
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func (export "_start")
    (call $write (i32.const 1) (i32.const 64) (i32.const 16))
    ;; fd 3 is /inputs, fd 4 is /outputs (the preopens, in that order).
    ;; path_open(dir, dirflags, path, path_len, O_CREAT|O_TRUNC, rights=fd_write, 0, 0, &fd)
    (if (call $path_open (i32.const 4) (i32.const 0) (i32.const 96) (i32.const 9)
          (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 12))
      (then (call $proc_exit (i32.const 1))))
    (call $write (i32.load (i32.const 12)) (i32.const 64) (i32.const 16))))
