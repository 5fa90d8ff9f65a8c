// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "mailroute",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "mailrouted", targets: ["mailrouted"]),
        .executable(name: "mailroutectl", targets: ["mailroutectl"]),
        .library(name: "MailrouteCore", targets: ["MailrouteCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/groue/GRDB.swift", exact: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", exact: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto", exact: "3.12.3"),
        .package(url: "https://github.com/LebJe/TOMLKit", exact: "0.6.0"),
        // The PostgreSQL backend (SPEC §8): NIO-based, async/await, no hand-written wire protocol.
        .package(url: "https://github.com/vapor/postgres-nio", exact: "1.33.2"),
        // postgres-nio's TLS; named here only to build its client configuration.
        .package(url: "https://github.com/apple/swift-nio-ssl", exact: "2.37.6"),
        // The HTTP API (SPEC §9); its default traits pull in swift-configuration, unused here.
        .package(url: "https://github.com/hummingbird-project/hummingbird", exact: "2.28.1", traits: []),
        // Named for NIOCore's Channel (the API's bound address); the version postgres-nio and Hummingbird resolve to.
        .package(url: "https://github.com/apple/swift-nio", exact: "2.101.3"),
        // Metrics (SPEC §9): swift-metrics is the API libraries record through; swift-prometheus renders the text format.
        .package(url: "https://github.com/apple/swift-metrics", exact: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", exact: "2.4.1"),
    ],
    targets: [
        // C stays in these two shim targets; Swift sees typed wrappers only.
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        .target(
            name: "MailrouteCore",
            dependencies: [
                "CCurl",
                "COpenSSL",
                "CSystemd",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                // RSA signing for DKIM; Ed25519 is in Crypto itself.
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .target(
            name: "MailrouteCLI",
            dependencies: [
                "MailrouteCore",
                "MailrouteAPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The HTTP API: routes, auth and JSON over the operations MailrouteCore's Control offers the CLI too.
        .target(
            name: "MailrouteAPI",
            dependencies: [
                "MailrouteCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            // Served at GET /openapi.json, from the committed file itself: one document, no copy to drift.
            resources: [.embedInCode("openapi.json")]
        ),
        .executableTarget(name: "mailrouted", dependencies: ["MailrouteCLI"]),
        .executableTarget(name: "mailroutectl", dependencies: ["MailrouteCLI"]),
        .testTarget(
            name: "MailrouteTests",
            dependencies: [
                "MailrouteCore",
                "MailrouteCLI",
                "MailrouteAPI",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
