// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let log: Target.Dependency = .product(name: "Logging", package: "swift-log")
let nioCore: Target.Dependency = .product(name: "NIOCore", package: "swift-nio")
let nioPosix: Target.Dependency = .product(name: "NIOPosix", package: "swift-nio")
let nioLocks: Target.Dependency = .product(name: "NIOConcurrencyHelpers", package: "swift-nio")
let argumentParser: Target.Dependency = .product(name: "ArgumentParser", package: "swift-argument-parser")
let nioSSL: Target.Dependency = .product(name: "NIOSSL", package: "swift-nio-ssl")
let coreMetrics: Target.Dependency = .product(name: "CoreMetrics", package: "swift-metrics")

let package = Package(
    name: "Plugboard",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Chan", targets: ["Chan"]),
        .library(name: "Hub", targets: ["Hub"]),
        .library(name: "Pipeline", targets: ["Pipeline"]),
        .library(name: "Hooks", targets: ["Hooks"]),
        .library(name: "Engine", targets: ["Engine"]),
        .library(name: "PluginKit", targets: ["PluginKit"]),
        .library(name: "AdminProtocol", targets: ["AdminProtocol"]),
        .executable(name: "plugboardd", targets: ["plugboardd"]),
        .executable(name: "plugboard", targets: ["plugboard"]),
        .executable(name: "plugboard-sh", targets: ["plugboard-sh"]),
        .executable(name: "plugboard-conformance", targets: ["plugboard-conformance"]),
        .executable(name: "plugboard-bench", targets: ["plugboard-bench"]),
        .executable(name: "plugboard-plugin-echo", targets: ["plugboard-plugin-echo"]),
        .executable(name: "plugboard-exec-shim", targets: ["plugboard-exec-shim"]),
        .executable(name: "plugboard-plugin-host-mount", targets: ["plugboard-plugin-host-mount"]),
        .executable(name: "plugboard-plugin-label", targets: ["plugboard-plugin-label"]),
        .executable(name: "plugboard-plugin-containers", targets: ["plugboard-plugin-containers"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    ],
    targets: [
        // msgpack-c from libmsgpack-dev, found through pkg-config. Only Chan imports it.
        .systemLibrary(
            name: "CMsgpack",
            pkgConfig: "msgpack",
            providers: [.apt(["libmsgpack-dev"])]
        ),
        // Messaging only: values, frames, sessions, transports. Nothing of ours but CMsgpack.
        .target(name: "Chan", dependencies: ["CMsgpack", nioCore, nioPosix, nioLocks, log], swiftSettings: strict),
        // glibc's posix_spawn GNU extensions (closefrom, chdir), pipe2 and pidfd_open, which need _GNU_SOURCE.
        .target(name: "CSpawn"),
        .target(name: "Spawn", dependencies: ["CSpawn", log, nioCore, nioPosix, nioLocks], swiftSettings: strict),
        // A child process with its session on fds 3/4: Chan over Spawn.
        .target(name: "PluginProcess", dependencies: ["Chan", "Spawn", log], swiftSettings: strict),
        // What both ends of the admin socket share: the socket's place, requests, replies, error codes.
        .target(name: "AdminProtocol", dependencies: ["Chan"], swiftSettings: strict),
        // What the routing models share: participants (in process or remote), deadlines,
        // in-flight tracking, priority order.
        .target(name: "Routing", dependencies: ["Chan", coreMetrics, nioLocks], swiftSettings: strict),
        .target(name: "Hub", dependencies: ["Chan", "Routing", log, nioCore, nioLocks], swiftSettings: strict),
        .target(name: "Pipeline", dependencies: ["Chan", "Routing", log, nioLocks], swiftSettings: strict),
        .target(name: "Hooks", dependencies: ["Chan", "Routing", log, nioLocks], swiftSettings: strict),
        // Sessions beyond fds 3/4: endpoints (unix:/path, tcp://HOST:PORT), mutual TLS
        // (swift-nio-ssl), the connect-in listener and the reconnecting connector. TLS lives
        // here, not in Chan, which stays messaging only.
        .target(name: "Remote", dependencies: ["Chan", nioCore, nioPosix, nioLocks, nioSSL, .product(name: "NIOTLS", package: "swift-nio"), log], swiftSettings: strict),
        .target(name: "PluginKit", dependencies: ["Chan", "Routing", "Hooks", "Pipeline", "Remote", log], swiftSettings: strict),
        // Containers on runc: plugin manifests and privileges, the OCI spec we write, runc
        // itself, and the container lifecycle the containers plugin serves.
        .target(name: "Containers", dependencies: ["Chan", "Spawn", log, nioCore, nioLocks], swiftSettings: strict),
        .target(
            name: "Engine",
            dependencies: ["AdminProtocol", "Chan", "Hub", "Pipeline", "Hooks", "Spawn", "PluginProcess", "Routing", "PluginKit", "Containers", "Remote", coreMetrics, nioCore, nioPosix, nioLocks, log],
            swiftSettings: strict
        ),
        // The services every plugboardd runs that reach into the engine (its event bus, its
        // supervisors' status): events and metrics. See README, Layout.
        .target(
            name: "Services",
            dependencies: [
                "Chan", "Engine", "PluginKit", coreMetrics, nioCore, nioPosix, log,
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // The state service: SQLite through GRDB (libsqlite3-dev), WAL mode. A service, not a
        // plugin: it answers for every plugin by the engine's grants, which plugboardd hands it.
        .target(name: "StateService", dependencies: ["PluginKit", "Chan", .product(name: "GRDB", package: "GRDB.swift")], swiftSettings: strict),
        .executableTarget(
            name: "plugboardd",
            dependencies: [
                "AdminProtocol", "Engine", "PluginKit", "Remote", "Routing", "Services", "Containers", "EchoPlugin", "HostMountPlugin", "ContainersPlugin", "StateService", "LocalVolumesPlugin",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                argumentParser, log,
            ],
            swiftSettings: strict
        ),
        // The conformance kit: runs a plugin executable through what docs/PROTOCOL.md requires,
        // frame by frame, without a daemon (docs/CONFORMANCE.md). Never the engine.
        .target(name: "Conformance", dependencies: ["Chan", "Spawn", "Routing", argumentParser, log, nioCore, nioPosix, nioLocks], swiftSettings: strict),
        .executableTarget(name: "plugboard-conformance", dependencies: ["Conformance", argumentParser, log], swiftSettings: strict),
        // The CLI links what both ends of the admin socket share, the conformance kit
        // (`plugboard plugin test`), Containers for plugin images (plugin create/push run
        // umoci and skopeo here) and Remote (the admin socket over mutual TLS); never the engine.
        .executableTarget(name: "plugboard", dependencies: ["AdminProtocol", "Chan", "Conformance", "Containers", "Remote", argumentParser, log], swiftSettings: strict),
        // Shell scripts as plugins: header registrations, the env format, call and stream
        // modes, the callback socket. plugboard-sh is the thin executable over it.
        .target(name: "ShellAdapter", dependencies: ["Chan", "PluginKit", "Hooks", "Spawn", "Routing", log, nioLocks], swiftSettings: strict),
        .executableTarget(name: "plugboard-sh", dependencies: ["PluginKit", "ShellAdapter", "Chan", argumentParser, log, nioLocks], swiftSettings: strict),
        .executableTarget(
            name: "plugboard-bench",
            dependencies: ["Chan", "Spawn", "PluginProcess", "Routing", "Hub", "Hooks", "Pipeline", "Engine", "AdminProtocol", "Containers", "PluginKit", "Remote", argumentParser, log, nioLocks],
            swiftSettings: strict
        ),
        // The plugins we ship: each links into plugboardd and builds as plugboard-plugin-NAME.
        .target(name: "EchoPlugin", dependencies: ["PluginKit", "Chan"], path: "plugins/echo", exclude: ["main"], swiftSettings: strict),
        .executableTarget(name: "plugboard-plugin-echo", dependencies: ["EchoPlugin", "PluginKit"], path: "plugins/echo/main", swiftSettings: strict),
        .target(name: "HostMountPlugin", dependencies: ["PluginKit", "Chan"], path: "plugins/host-mount", exclude: ["main"], swiftSettings: strict),
        // A volume driver (the volume.driver extension point) over local directories.
        .target(name: "LocalVolumesPlugin", dependencies: ["PluginKit", "Chan"], path: "plugins/local-volumes", exclude: ["main"], swiftSettings: strict),
        .executableTarget(name: "plugboard-plugin-local-volumes", dependencies: ["LocalVolumesPlugin", "PluginKit"], path: "plugins/local-volumes/main", swiftSettings: strict),
        .executableTarget(name: "plugboard-plugin-host-mount", dependencies: ["HostMountPlugin", "PluginKit"], path: "plugins/host-mount/main", swiftSettings: strict),
        .target(name: "ContainersPlugin", dependencies: ["PluginKit", "Chan", "Containers", "Hooks", "Pipeline", "Routing", log, nioLocks], path: "plugins/containers", exclude: ["main"], swiftSettings: strict),
        .executableTarget(name: "plugboard-plugin-containers", dependencies: ["ContainersPlugin", "Containers", "PluginKit", log], path: "plugins/containers/main", swiftSettings: strict),
        // The container plugin we ship: its binary goes into a rootfs that plugins/label/build-bundle.sh makes.
        .target(name: "LabelPlugin", dependencies: ["PluginKit", "Chan"], path: "plugins/label", exclude: ["main", "bundle", "build-bundle.sh", "README.md"], swiftSettings: strict),
        .executableTarget(name: "plugboard-plugin-label", dependencies: ["LabelPlugin", "PluginKit"], path: "plugins/label/main", swiftSettings: strict),
        // A PluginKit plugin the engine tests configure through its options.
        .executableTarget(name: "plugboard-test-plugin", dependencies: ["PluginKit", "Pipeline", "Chan"], swiftSettings: strict),
        // Sets the parent-death signal, then execs a plugin (posix_spawn cannot do it).
        .executableTarget(name: "plugboard-exec-shim"),
        // make chaos: hurts plugins under load, then accounts for calls, fds, processes, containers.
        .executableTarget(name: "plugboard-chaos", dependencies: ["AdminProtocol", "Chan", "Spawn", argumentParser, log, nioLocks], swiftSettings: strict),
        // libFuzzer targets (make fuzz); built normally it replays the corpus and the crashers.
        .executableTarget(name: "plugboard-fuzz", dependencies: ["Chan", "Spawn", "AdminProtocol", log, nioCore, nioLocks], swiftSettings: strict),
        // A Chan peer on fds 3/4 with scripted behaviours, spawned by the tests as a real child process.
        .executableTarget(name: "plugboard-test-peer", dependencies: ["Chan", log], swiftSettings: strict),
        // Helpers every test target shares: deadlines, spawning the test peer, signals.
        .target(name: "TestSupport", dependencies: ["Chan", "Spawn", "PluginProcess", "Routing", log, nioLocks], path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(
            name: "ChanTests",
            dependencies: [
                "Chan", "Spawn", "TestSupport", nioCore, log, nioLocks,
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "SpawnTests", dependencies: ["Spawn"], swiftSettings: strict),
        // Runs the real plugboard-conformance against the plugins we ship and a broken fixture.
        .testTarget(name: "ConformanceTests", dependencies: ["Conformance", "Chan", "Spawn", "TestSupport"], exclude: ["Fixtures"], swiftSettings: strict),
        .testTarget(name: "RoutingTests", dependencies: ["Routing", "TestSupport", nioLocks], swiftSettings: strict),
        .testTarget(name: "HubTests", dependencies: ["Hub", "Routing", "Chan", "TestSupport", nioLocks], swiftSettings: strict),
        .testTarget(name: "PipelineTests", dependencies: ["Pipeline", "Routing", "Chan", "TestSupport", nioLocks], swiftSettings: strict),
        .testTarget(name: "HooksTests", dependencies: ["Hooks", "Routing", "Chan", "TestSupport", nioLocks], swiftSettings: strict),
        .testTarget(name: "PluginKitTests", dependencies: ["PluginKit", "Hooks", "Routing", "Chan"], swiftSettings: strict),
        .testTarget(name: "ContainersTests", dependencies: ["Containers", "Chan", nioLocks], swiftSettings: strict),
        .testTarget(name: "ShellAdapterTests", dependencies: ["ShellAdapter", "Chan", "PluginKit"], swiftSettings: strict),
        .testTarget(
            name: "EngineTests",
            dependencies: [
                "Engine", "PluginKit", "Routing", "Chan", "Spawn", "TestSupport", "HostMountPlugin", "ContainersPlugin", "Remote",
                "Containers", "ShellAdapter", "StateService", "Hooks", "Pipeline", log, nioLocks,
            ],
            // Plugins in other languages the tests run (the Python SDK's remote plugin).
            exclude: ["Fixtures"],
            swiftSettings: strict
        ),
    ]
)
