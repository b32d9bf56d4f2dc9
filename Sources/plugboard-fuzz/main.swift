// plugboard-fuzz: libFuzzer targets over the frame decoder, the msgpack decoder and a live
// session. Built with `make fuzz` (-sanitize=fuzzer,address and -DFUZZING), it hands
// control to libFuzzer; built normally, it replays inputs (the seed corpus, the crashers
// kept as regressions) and exits 0 if none crashes: `plugboard-fuzz replay TARGET FILE...`.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

let arguments = CommandLine.arguments
if arguments.count == 3 && arguments[1] == "seeds" {
    // Writes the seed corpus (Fuzz/corpus/TARGET/*) from values the code itself encodes.
    let written = Seeds.write(to: arguments[2])
    print("plugboard-fuzz: wrote \(written) seeds under \(arguments[2])")
    exit(0)
}
let targetName = ProcessInfo.processInfo.environment["PLUGBOARD_FUZZ_TARGET"] ?? (arguments.count > 2 && arguments[1] == "replay" ? arguments[2] : "")
guard let target = FuzzTarget(rawValue: targetName) else {
    let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
    FileHandle.standardError.write(Data("plugboard-fuzz: set PLUGBOARD_FUZZ_TARGET to one of \(names) (libFuzzer build), or run: plugboard-fuzz replay TARGET FILE...\n".utf8))
    exit(2)
}

#if FUZZING
/// libFuzzer's driver (linked by -sanitize=fuzzer); our own main keeps its main out.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

nonisolated(unsafe) var fuzzTarget = target

/// libFuzzer's library refers to this symbol even when its driver is handed a callback.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    fuzzTarget.run(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}
var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
    fuzzTarget.run(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
})
#else
var replayed = 0
for path in arguments.dropFirst(3) {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
        FileHandle.standardError.write(Data("plugboard-fuzz: no such file \(path)\n".utf8))
        exit(2)
    }
    let files = isDirectory.boolValue
        ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 }
        : [path]
    for file in files {
        guard let data = FileManager.default.contents(atPath: file) else { continue }
        target.run(Array(data))
        replayed += 1
    }
}
print("plugboard-fuzz: \(target.rawValue): \(replayed) inputs replayed, none crashed")
#endif
