// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let routingDeps: [Target.Dependency] = [
    "Chan", "Routing",
    .product(name: "Logging", package: "swift-log"),
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
]

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
        .executable(name: "plugboardd", targets: ["plugboardd"]),
        .executable(name: "plugboard", targets: ["plugboard"]),
        .executable(name: "plugboard-sh", targets: ["plugboard-sh"]),
        .executable(name: "plugboard-bench", targets: ["plugboard-bench"]),
        .executable(name: "plugboard-plugin-echo", targets: ["plugboard-plugin-echo"]),
        .executable(name: "plugboard-exec-shim", targets: ["plugboard-exec-shim"]),
        .executable(name: "plugboard-plugin-host-mount", targets: ["plugboard-plugin-host-mount"]),
        .executable(name: "plugboard-plugin-label", targets: ["plugboard-plugin-label"]),
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
    ],
    targets: [
        // msgpack-c from libmsgpack-dev, found through pkg-config. Only Chan imports it.
        .systemLibrary(
            name: "CMsgpack",
            pkgConfig: "msgpack",
            providers: [.apt(["libmsgpack-dev"])]
        ),
        .target(
            name: "Chan",
            dependencies: [
                "CMsgpack", "Spawn", "CSpawn",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // glibc's posix_spawn GNU extensions (closefrom, chdir) and pipe2, which need _GNU_SOURCE.
        .target(name: "CSpawn"),
        .target(
            name: "Spawn",
            dependencies: [
                "CSpawn",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // What the three routing models share: participants (in process or remote),
        // deadlines, in-flight tracking, priority order.
        .target(
            name: "Routing",
            dependencies: [
                "Chan",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .target(name: "Hub", dependencies: routingDeps, swiftSettings: strict),
        .target(name: "Pipeline", dependencies: routingDeps, swiftSettings: strict),
        .target(name: "Hooks", dependencies: routingDeps, swiftSettings: strict),
        // Containers on runc: plugin manifests and privileges, the OCI spec we write, runc
        // itself, and the container lifecycle the built-in containers plugin serves.
        .target(
            name: "Containers",
            dependencies: [
                "Chan", "Spawn",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "Engine",
            dependencies: [
                "Chan", "Hub", "Pipeline", "Hooks", "Spawn", "Routing", "PluginKit", "Containers",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "PluginKit",
            dependencies: ["Chan", "Routing", "Hooks", "Pipeline", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "plugboardd",
            dependencies: [
                "Engine", "PluginKit", "EchoPlugin", "HostMountPlugin", "ContainersPlugin", "Containers", "EventsPlugin", "StatePlugin", "MetricsPlugin",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "plugboard",
            dependencies: [
                "Chan", "Engine", "Containers",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // Shell scripts as plugins: header registrations, the env format, call and stream
        // modes, the callback socket. plugboard-sh is the thin executable over it.
        .target(
            name: "ShellAdapter",
            dependencies: [
                "Chan", "PluginKit", "Hooks", "Spawn", "Routing",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "plugboard-sh",
            dependencies: [
                "PluginKit", "ShellAdapter", "Chan",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "plugboard-bench",
            dependencies: [
                "Chan", "Spawn", "Routing", "Hub", "Hooks", "Engine", "Containers", "PluginKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // The plugins we ship: each links into plugboardd and builds as plugboard-plugin-NAME.
        .target(name: "EchoPlugin", dependencies: ["PluginKit", "Chan"], path: "plugins/echo", exclude: ["main"], swiftSettings: strict),
        .executableTarget(name: "plugboard-plugin-echo", dependencies: ["EchoPlugin", "PluginKit"], path: "plugins/echo/main", swiftSettings: strict),
        .target(name: "HostMountPlugin", dependencies: ["PluginKit", "Chan"], path: "plugins/host-mount", exclude: ["main"], swiftSettings: strict),
        .executableTarget(name: "plugboard-plugin-host-mount", dependencies: ["HostMountPlugin", "PluginKit"], path: "plugins/host-mount/main", swiftSettings: strict),
        // The state service: SQLite through GRDB (libsqlite3-dev), WAL mode.
        .target(name: "StatePlugin", dependencies: ["PluginKit", "Chan", .product(name: "GRDB", package: "GRDB.swift")], path: "plugins/state", swiftSettings: strict),
        // The metrics service: swift-metrics backed by swift-prometheus, and its HTTP endpoint.
        .target(
            name: "MetricsPlugin",
            dependencies: [
                "PluginKit", "Chan", "Engine",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "plugins/metrics", swiftSettings: strict
        ),
        .target(name: "EventsPlugin", dependencies: ["PluginKit", "Chan", "Engine"], path: "plugins/events", swiftSettings: strict),
        .target(name: "ContainersPlugin", dependencies: ["PluginKit", "Chan", "Containers", "Hooks", .product(name: "Logging", package: "swift-log")], path: "plugins/containers", swiftSettings: strict),
        // The container plugin we ship: its binary goes into a rootfs that plugins/label/build-bundle.sh makes.
        .target(name: "LabelPlugin", dependencies: ["PluginKit", "Chan"], path: "plugins/label", exclude: ["main", "bundle", "build-bundle.sh", "README.md"], swiftSettings: strict),
        .executableTarget(name: "plugboard-plugin-label", dependencies: ["LabelPlugin", "PluginKit"], path: "plugins/label/main", swiftSettings: strict),
        // A PluginKit plugin the engine tests configure through its options.
        .executableTarget(name: "plugboard-test-plugin", dependencies: ["PluginKit", "Chan"], swiftSettings: strict),
        // Sets the parent-death signal, then execs a plugin (posix_spawn cannot do it).
        .executableTarget(name: "plugboard-exec-shim"),
        // make chaos: hurts plugins under load, then accounts for calls, fds, processes, containers.
        .executableTarget(
            name: "plugboard-chaos",
            dependencies: [
                "Chan", "Spawn",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // libFuzzer targets (make fuzz); built normally it replays the corpus and the crashers.
        .executableTarget(
            name: "plugboard-fuzz",
            dependencies: [
                "Chan", "Spawn",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // A Chan peer on fds 3/4 with scripted behaviours, spawned by the tests as a real child process.
        .executableTarget(
            name: "plugboard-test-peer",
            dependencies: ["Chan", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        // Helpers every test target shares: deadlines, spawning the test peer, signals.
        .target(
            name: "TestSupport",
            dependencies: [
                "Chan", "Spawn", "Routing",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            path: "Tests/TestSupport",
            swiftSettings: strict
        ),
        .testTarget(
            name: "ChanTests",
            dependencies: [
                "Chan", "Spawn", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "SpawnTests", dependencies: ["Spawn"], swiftSettings: strict),
        .testTarget(name: "HubTests", dependencies: ["Hub", "Routing", "Chan", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "PipelineTests", dependencies: ["Pipeline", "Routing", "Chan", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "PluginKit", "Routing", "Chan", "Spawn", "TestSupport", "HostMountPlugin", "ContainersPlugin", "Containers", "LabelPlugin", "ShellAdapter", "EventsPlugin", "StatePlugin"], swiftSettings: strict),
        .testTarget(name: "HooksTests", dependencies: ["Hooks", "Routing", "Chan", "TestSupport"], swiftSettings: strict),
    ]
)
