// Relative asset paths: the test serves dist/ from a plain static server on its own origin.
import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  build: {
    sourcemap: false,
    chunkSizeWarningLimit: 2048,
    rollupOptions: {
      // The hooks and swr mark their modules "use client", which means nothing in a bundle.
      onwarn(warning, warn) {
        if (warning.code !== "MODULE_LEVEL_DIRECTIVE") warn(warning);
      },
    },
  },
});
